//! What lesson-8 prints still matches the sample run the book shows,
//! docs/src/transcripts/lesson-8.txt (regenerate it with
//! scripts/update-transcripts 8 after changing the lesson's text).

use std::path::Path;

use common::testkit::{self, Compare};

// Structure only: lesson-8's tables, charts and conclusions follow what it
// measured, and a warning follows the load average.
#[test]
fn the_output_matches_the_books_transcript() {
    testkit::check_transcript(
        Path::new(env!("CARGO_BIN_EXE_lesson-8")),
        8,
        Compare::Structure,
        &["CPUs online", "virtualised"],
        &[],
    );
}
