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
        // What the host holds before and after depends on every other
        // program on the machine (another run's segment appears in `ipcs -m`
        // and the after-section says "changed by other processes"); the
        // lesson's own tests check that it left the host as it was.
        &["The host"],
    );
}
