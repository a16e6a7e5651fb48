//! What lesson-10 prints still matches the sample run the book shows,
//! docs/src/transcripts/lesson-10.txt (regenerate it with
//! scripts/update-transcripts 10 after changing the lesson's text).

use std::path::Path;

use common::testkit::{self, Compare};

#[test]
fn the_output_matches_the_books_transcript() {
    testkit::check_transcript(
        Path::new(env!("CARGO_BIN_EXE_lesson-10")),
        10,
        Compare::Everything,
        &[],
        &[],
    );
}
