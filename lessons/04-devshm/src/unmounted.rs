//! Scenario 1: `/dev/shm` unmounted, as on a 2010 machine: a plain directory
//! on udev's tmpfs at `/dev`. Staged with a fresh tmpfs over `/dev`, in this
//! child's namespace only.

use common::args::Hold;
use common::narrate::{compare, evidence, explain};
use common::{call, shm};
use nix::mount::{MsFlags, mount};
use nix::sys::stat::Mode;
use nix::unistd::mkdir;

use crate::show::{findmnt_t, locate, look, remove, result};

// ANCHOR: unmounted
pub fn run(name: &str, hold: Hold) -> anyhow::Result<()> {
    explain("2010: udev's tmpfs on /dev; unmounted, /dev/shm was a plain directory on it.");
    evidence("findmnt /dev   # inherited", findmnt_t("/dev"));
    let (udev, nosuid) = (Some("mode=0755"), MsFlags::MS_NOSUID);
    call!(mount(Some("udev"), "/dev", Some("tmpfs"), nosuid, udev))?;
    call!(mkdir("/dev/shm", Mode::from_bits_truncate(0o1777)))?;
    evidence("findmnt -T /dev/shm", findmnt_t("/dev/shm"));
    let (fd, object) = shm::create(name)?;
    let fs = locate(name)?;
    look(
        hold,
        &[
            "findmnt -N PID /dev   # the child's /dev: our tmpfs",
            "ls -l /proc/PID/root/dev/shm/   # the object, through the child's root",
            "findmnt /dev/shm   # the host's: unchanged",
        ],
    );
    remove(name, fd, object)?;
    compare(
        "after umount /dev/shm, \"shm_open only creates a file under /dev/shm\"",
        &format!("shm_open worked; {fs}"),
        "glibc 2.34+ opens /dev/shm/NAME whatever holds it. Today that is the host's devtmpfs \
         /dev, shared by every namespace: run for real, the article's experiment writes there.",
    );
    result(1, "unmounted", &format!("shm_open worked; {fs}"));
    Ok(())
}
// ANCHOR_END: unmounted
