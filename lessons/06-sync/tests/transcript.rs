//! What lesson-6 prints still matches the sample run the book shows,
//! docs/src/transcripts/lesson-6.txt (regenerate it with
//! scripts/update-transcripts 6 after changing the lesson's text).

use std::path::Path;

use common::testkit::{self, Compare};

// Structure only: lesson-6's conclusions follow what it measured (whether a
// reordering showed up in this run), so their wording changes between runs.
#[test]
fn the_output_matches_the_books_transcript() {
    testkit::check_transcript(
        Path::new(env!("CARGO_BIN_EXE_lesson-6")),
        6,
        Compare::Structure,
        &[],
        &[],
    );
}
