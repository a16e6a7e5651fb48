//! Part 3. `--shm-size`.

use common::args::Hold;

pub fn run(_hold: Hold) -> anyhow::Result<()> {
    Ok(())
}

pub fn inside() -> anyhow::Result<()> {
    Ok(())
}
