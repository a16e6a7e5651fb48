//! Scenario 0: `/dev/shm` as it is, a tmpfs. No namespace is needed to look.

use common::args::Hold;
use common::narrate::explain;
use common::{call, names, shm};

use crate::show::{self, locate, look, remove, result};

// ANCHOR: baseline
pub fn run(name: &str, hold: Hold) -> anyhow::Result<()> {
    explain("No namespace is needed to look: this child sees the host's /dev/shm.");
    call!(show::statfs("/dev/shm") => show::fs_shown)?;
    let (fd, object) = shm::create(name)?;
    let fs = locate(name)?;
    look(
        hold,
        &[&format!("ls -l /dev/shm/{}", names::file_name(name))],
    );
    remove(name, fd, object)?;
    result(0, "baseline", &format!("shm_open worked; {fs}"));
    Ok(())
}
// ANCHOR_END: baseline
