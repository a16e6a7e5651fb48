//! Part 5: huge pages. `MAP_HUGETLB` and `MFD_HUGETLB` from the reserved
//! pool, then transparent huge pages on a tmpfs of our own, mounted in a
//! private mount namespace of a child (this program again, started with
//! `--internal-thp DIR`).

use std::num::NonZeroUsize;
use std::path::Path;
use std::process::ExitCode;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use common::children::{Waited, wait_deadline};
use common::narrate::{self, evidence, explain, fact, section, subsection, warn};
use common::pages::{self, THP_DIR, minor_faults};
use common::{attempt, call};
use common::{cleanup, fault, inspect, names, ns};
use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::mount::{MsFlags, mount};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, mmap_anonymous, munmap};
use nix::sys::stat::Mode;
use nix::sys::wait::WaitStatus;
use nix::unistd::{Pid, close, ftruncate, getpid, mkdir, unlink};

use crate::util::word;

/// How the lesson starts the THP child: `lesson-9 --internal-thp DIR`.
pub const INTERNAL: &str = "--internal-thp";
/// Exit status for "skipped: no private mount namespace here".
pub const SKIPPED: u8 = 77;
/// What the THP child touches, as the issue asks: 64 MiB.
const THP_SIZE: usize = 64 << 20;

/// The files under /sys/kernel/mm/transparent_hugepage this part reads
/// (and never writes).
const THP_FILES: [&str; 3] = ["enabled", "shmem_enabled", "hpage_pmd_size"];

fn meminfo(field: &str) -> u64 {
    inspect::meminfo_kib(field).unwrap_or(0)
}

/// Part 5. Returns false when the THP half was skipped (no namespaces).
pub fn part5(page: usize) -> anyhow::Result<bool> {
    section("5. Huge pages");
    hugetlb(page)?;
    transparent(page)
}

fn hugetlb(page: usize) -> anyhow::Result<()> {
    subsection("MAP_HUGETLB and MFD_HUGETLB: pages from a pool reserved in advance");
    let huge = (meminfo("Hugepagesize") as usize) << 10;
    let (total, free) = (meminfo("HugePages_Total"), meminfo("HugePages_Free"));
    let sysctl = |f: &str| {
        std::fs::read_to_string(format!("/proc/sys/vm/{f}"))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let surplus = sysctl("nr_overcommit_hugepages");
    evidence(
        "grep -E '^(HugePages_Total|HugePages_Free|Hugepagesize):' /proc/meminfo; cd /proc/sys/vm; grep . nr_hugepages nr_overcommit_hugepages",
        [
            format!("HugePages_Total: {total}"),
            format!("HugePages_Free: {free}"),
            format!("Hugepagesize: {} kB", huge >> 10),
            format!("nr_hugepages:{}", sysctl("nr_hugepages")),
            format!("nr_overcommit_hugepages:{surplus}"),
        ],
    );
    // ANCHOR: hugetlb
    let Some(len) = NonZeroUsize::new(huge) else {
        warn("no Hugepagesize in /proc/meminfo: this kernel has no hugetlb pages");
        return Ok(());
    };
    let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let flags = MapFlags::MAP_PRIVATE | MapFlags::MAP_ANONYMOUS | MapFlags::MAP_HUGETLB;
    // SAFETY: a new anonymous mapping overlaps nothing of Rust's.
    let anon = unsafe { attempt!(mmap_anonymous(None, len, rw, flags)) };
    let fd = call!(memfd_create(
        "shm-lessons-9-huge",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_HUGETLB,
    ))?;
    call!(ftruncate(&fd, huge as libc::off_t))?;
    // SAFETY: as above.
    let shared = unsafe { attempt!(mmap(None, len, rw, MapFlags::MAP_SHARED, &fd, 0)) };
    // ANCHOR_END: hugetlb
    match (anon, shared) {
        (Ok(a), Ok(m)) => use_huge_pages(a, m, huge, page, free)?,
        (Err(Errno::ENOMEM), Err(Errno::ENOMEM)) => explain(format!(
            "Both failed with ENOMEM: there are {free} free huge pages of {} kB, and a \
             MAP_HUGETLB mapping (or a hugetlbfs file, which is what MFD_HUGETLB makes) takes \
             its pages only from that pool. The pool holds vm.nr_hugepages pages, {total} \
             here, and may grow on demand by vm.nr_overcommit_hugepages surplus pages, \
             {surplus} here. An administrator sets them (sysctl vm.nr_hugepages=N) for the \
             whole machine, and that memory is then set aside for huge pages alone \
             (Documentation/admin-guide/mm/hugetlbpage.rst). This lesson never changes them: \
             that is the machine owner's decision.",
            huge >> 10
        )),
        (a, m) => {
            warn(format!(
                "one call got a huge page and the other did not: {:?}, {:?}",
                a.map(|_| ()),
                m.map(|_| ())
            ));
            for p in [a, m].into_iter().flatten() {
                // SAFETY: a mapping made above; nothing points into it.
                unsafe { munmap(p, huge) }.ok();
            }
        }
    }
    narrate::end_pending();
    Ok(())
}

/// The pool had pages: touch both mappings and watch HugePages_Free drop.
fn use_huge_pages(
    a: NonNull<libc::c_void>,
    m: NonNull<libc::c_void>,
    huge: usize,
    page: usize,
    before: u64,
) -> anyhow::Result<()> {
    // SAFETY: both are live mappings of `huge` bytes; nobody else maps them.
    unsafe {
        word(a, 0).store(1, Ordering::Relaxed);
        word(m, 0).store(1, Ordering::Relaxed);
    }
    let after = meminfo("HugePages_Free");
    let kps = pages::smaps_of("self", a.as_ptr() as usize).and_then(|s| s.kib("KernelPageSize"));
    fact(
        "HugePages_Free",
        format!("{before} -> {after} after one write to each mapping"),
    );
    fact(
        "KernelPageSize of the MAP_HUGETLB mapping",
        format!("{} kB (a normal page: {} kB)", kps.unwrap_or(0), page >> 10),
    );
    for p in [a, m] {
        // SAFETY: a mapping made in hugetlb(); nothing points into it later.
        unsafe { call!(munmap(p, huge)) }?;
    }
    Ok(())
}

/// Every THP setting this part reads, as text (to show, and to compare).
pub fn thp_settings() -> Vec<String> {
    THP_FILES
        .iter()
        .map(|f| {
            format!(
                "{f}: {}",
                std::fs::read_to_string(format!("{THP_DIR}/{f}"))
                    .unwrap_or_else(|e| format!("({e})"))
                    .trim()
            )
        })
        .collect()
}

fn transparent(page: usize) -> anyhow::Result<bool> {
    subsection("transparent huge pages on a tmpfs of our own");
    let settings = thp_settings();
    evidence(
        &format!("cd {THP_DIR}; grep . {}", THP_FILES.join(" ")),
        settings.clone(),
    );
    let Some(pmd) = pages::pmd_size() else {
        warn("this kernel has no transparent huge pages (no hpage_pmd_size): skipping");
        return Ok(true);
    };
    explain(format!(
        "shmem_enabled decides for memory the kernel's internal tmpfs backs \
         (MAP_SHARED|MAP_ANONYMOUS, System V segments, memfd); a tmpfs that is mounted says \
         for itself, with its huge= option, unless shmem_enabled is deny or force \
         (Documentation/admin-guide/mm/transhuge.rst). We change neither setting of the host: a child of ours mounts two tmpfs of \
         its own, huge=never and huge=always, in a private mount namespace, and touches {} \
         MiB in each. One huge page is {pmd} bytes = {} pages of {page}.",
        THP_SIZE >> 20,
        pmd / page
    ));
    let before = ns::mount_table();
    let dir = std::env::temp_dir().join(format!("{}9-{}-thp", names::PREFIX, getpid()));
    call!(mkdir(dir.as_path(), Mode::from_bits_truncate(0o700)))?;
    let dir_guard = cleanup::path(&dir); // removed on every path
    let child = ns::spawn_self(&[INTERNAL.to_string(), dir.display().to_string()])
        .context("starting the THP child")?;
    let pid = Pid::from_raw(child.id() as i32);
    let guard = cleanup::child(pid);
    let waited = wait_deadline(pid, Duration::from_secs(120)).context("waitpid")?;
    guard.disarm();
    let diff = ns::mount_table_diff(&before, &ns::mount_table());
    if !diff.is_empty() {
        bail!("the host's mount table changed:\n{}", diff.join("\n"));
    }
    if thp_settings() != settings {
        bail!("the host's THP settings changed");
    }
    fact(
        "back in the host",
        "the mount table and the THP settings are unchanged",
    );
    call!(cleanup::rmdir(dir.as_path()))?;
    dir_guard.disarm(); // removed by the lesson itself
    match waited {
        Waited::Ended(WaitStatus::Exited(_, 0)) => Ok(true),
        Waited::Ended(WaitStatus::Exited(_, c)) if c == i32::from(SKIPPED) => Ok(false),
        Waited::Ended(s) => bail!("the THP child {}", fault::describe(s)),
        Waited::TimedOut(_) => bail!("the THP child did not finish in time"),
    }
}

/// The THP child: make the namespace while still single-threaded, then
/// mount and measure.
pub fn child_main(args: &[String]) -> ExitCode {
    narrate::init();
    let Some(dir) = args.first() else {
        eprintln!("usage: lesson-9 {INTERNAL} DIR (lesson-9 starts this itself)");
        return ExitCode::from(2);
    };
    fact("THP child", format!("pid {}", getpid()));
    if let Err(refused) = ns::enter_private_mount_namespace() {
        refused.explain();
        warn(format!(
            "skipped: the transparent huge page half of part 5 needs a private mount \
             namespace (exit status {SKIPPED} at the end)"
        ));
        return ExitCode::from(SKIPPED);
    }
    let dir = Path::new(dir).to_path_buf();
    common::run(move || measure_both(&dir))
}

fn measure_both(dir: &Path) -> anyhow::Result<()> {
    let page = inspect::page_size();
    let pmd = pages::pmd_size().context("no hpage_pmd_size")?;
    let mut faults = Vec::new();
    for huge in ["never", "always"] {
        let options = format!("size={}M,huge={huge},mode=0700", (THP_SIZE >> 20) + 4);
        call!(mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::empty(),
            Some(options.as_str()),
        ))?;
        let (n, smaps) = touch_file(&dir.join("f"), page)?;
        let kib = |f: &str| smaps.as_ref().and_then(|s| s.kib(f)).unwrap_or(0);
        fact(
            &format!("huge={huge}"),
            format!(
                "{n} faults; Rss {} kB, ShmemPmdMapped {} kB, FilePmdMapped {} kB",
                kib("Rss"),
                kib("ShmemPmdMapped"),
                kib("FilePmdMapped")
            ),
        );
        faults.push((n, kib("ShmemPmdMapped")));
    }
    let ((small, _), (big, pmd_mapped)) = (faults[0], faults[1]);
    if pmd_mapped == 0 {
        warn(format!(
            "huge=always got no huge page here ({big} faults against {small}, ShmemPmdMapped \
             0 kB): the kernel falls back to small pages when it finds no free {} KiB block \
             (memory too fragmented, or used up).",
            pmd >> 10
        ));
        return Ok(());
    }
    explain(format!(
        "With huge=always the same {} MiB took {big} faults instead of {small}: {:.0} times \
         fewer. The most it can be is {} (a huge page of {pmd} bytes over pages of {page}): \
         one fault maps a whole {} KiB page with one PMD entry, which smaps counts as \
         ShmemPmdMapped.",
        THP_SIZE >> 20,
        small as f64 / big.max(1) as f64,
        pmd / page,
        pmd >> 10
    ));
    Ok(())
}

/// Create `path`, size it, map it, write a word in every page; the faults
/// that took and the mapping's smaps.
fn touch_file(path: &Path, page: usize) -> anyhow::Result<(i64, Option<pages::Smaps>)> {
    // ANCHOR: thp_touch
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
    let fd = call!(open(path, flags, Mode::from_bits_truncate(0o600)))?;
    call!(ftruncate(&fd, THP_SIZE as libc::off_t))?;
    let (len, rw) = (
        NonZeroUsize::new(THP_SIZE).context("size 0")?,
        ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
    );
    // SAFETY: a new mapping at an address the kernel picks overlaps nothing
    // of Rust's; only util::word touches it.
    let p = unsafe { call!(mmap(None, len, rw, MapFlags::MAP_SHARED, &fd, 0)) }?;
    let before = minor_faults();
    for off in (0..THP_SIZE).step_by(page) {
        // SAFETY: off < THP_SIZE: inside the live mapping, aligned.
        unsafe { word(p, off).store(1, Ordering::Relaxed) };
    }
    let n = minor_faults() - before;
    let smaps = pages::smaps_of("self", p.as_ptr() as usize);
    // ANCHOR_END: thp_touch
    // SAFETY: exactly the mapping made above; nothing points into it later.
    unsafe { call!(munmap(p, THP_SIZE)) }?;
    call!(close(fd))?;
    call!(unlink(path))?;
    Ok((n, smaps))
}
