//! What lesson-7 prints still matches the sample run the book shows,
//! docs/src/transcripts/lesson-7.txt (regenerate it with
//! scripts/update-transcripts 7 after changing the lesson's text).

use std::path::Path;

use common::testkit::{self, Compare};

/// Parts 1 and 4 read the machine-wide `Shmem:` figure; when other processes
/// move it at the same time the lesson says its figures prove nothing this
/// run, and prints that instead of its conclusion. So up to three runs: a
/// change of the lesson's text fails all three.
#[test]
fn the_output_matches_the_books_transcript() {
    for attempt in 1..=3 {
        let run = std::panic::catch_unwind(|| {
            testkit::check_transcript(
                Path::new(env!("CARGO_BIN_EXE_lesson-7")),
                7,
                Compare::Everything,
                &[],
                &["Leftovers of the shm-lessons lessons"],
            )
        });
        match run {
            Ok(()) => return,
            Err(e) if attempt == 3 => std::panic::resume_unwind(e),
            Err(_) => {
                eprintln!("run {attempt} differed (Shmem blurred by other processes?): again")
            }
        }
    }
}
