//! Part 2. Docker's `--ipc` modes, emulated.

use common::args::Hold;

pub fn run(_hold: Hold) -> anyhow::Result<()> {
    Ok(())
}

pub fn container(_mode: &str, _args: &[String]) -> anyhow::Result<()> {
    Ok(())
}

pub fn join(_args: &[String]) -> anyhow::Result<()> {
    Ok(())
}
