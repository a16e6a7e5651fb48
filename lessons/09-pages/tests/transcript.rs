//! What lesson-9 prints still matches the sample run the book shows,
//! docs/src/transcripts/lesson-9.txt (regenerate it with
//! scripts/update-transcripts 9 after changing the lesson's text).

use std::path::Path;

use common::testkit::{self, Compare};

// Part 4 is left out: its conclusions compare timings measured in this run.
#[test]
fn the_output_matches_the_books_transcript() {
    testkit::check_transcript(
        Path::new(env!("CARGO_BIN_EXE_lesson-9")),
        9,
        Compare::Everything,
        &[],
        &["4. The price of first touch"],
    );
}
