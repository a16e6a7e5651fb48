#!/usr/bin/env python3
"""Read lesson-5's POSIX shared memory object from Python.

    python3 scripts/lesson5_reader.py [/NAME] [--timeout SECS]

NAME defaults to /shm-lessons-5-<your user name>, as for the Rust reader.
The script waits (polling, never longer than --timeout) until the writer's
object exists and is marked READY, prints the message and the sequence
number, then acknowledges. It removes nothing: the writer does.

The layout is the one in lessons/05-unrelated/src/layout.rs: a header at
fixed offsets (never pointers), parsed here with struct.

Why not multiprocessing.shared_memory.SharedMemory(name=...)? It opens the
same object (glibc puts it at /dev/shm/NAME, which is what we map here), but
up to Python 3.12 it also registers the name with the resource tracker, which
*unlinks the writer's object* when this script exits and warns about a
"leaked" segment. Python 3.13 added SharedMemory(name, track=False) for that.

Python has no atomic loads or stores. On x86-64 every load is an acquire and
every store a release (total store order), so reading the state word and
then the message is correct there; on weakly ordered CPUs (arm64) prefer the
C reader, which uses __atomic_load_n(..., __ATOMIC_ACQUIRE).
"""

import mmap
import os
import pwd
import struct
import sys
import time

SIZE = 4096
MAGIC = b"SHMLSN5\0"
# magic, version, state, writer pid, reader pid, sequence, writer addr, length
HEADER = struct.Struct("<8sIIiiQQI4x")  # 48 bytes: the message starts at 48
STATE_OFF, READER_PID_OFF = 12, 20
READY, ACKED = 1, 2


def usage():
    print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
    sys.exit(2)


def parse_args(argv):
    name = "/shm-lessons-5-" + pwd.getpwuid(os.getuid()).pw_name
    timeout = 30.0
    it = iter(argv)
    for arg in it:
        if arg == "--timeout":
            try:
                timeout = float(next(it))
            except (StopIteration, ValueError):
                usage()
        elif arg.startswith("/") and "/" not in arg[1:]:
            name = arg
        else:
            usage()
    return name, timeout


def open_object(path):
    """(fd, writable), or None while the object does not exist yet."""
    try:
        return os.open(path, os.O_RDWR), True
    except PermissionError:
        return os.open(path, os.O_RDONLY), False  # may raise PermissionError
    except FileNotFoundError:
        return None


def main():
    name, timeout = parse_args(sys.argv[1:])
    path = "/dev/shm/" + name.lstrip("/")
    end = time.monotonic() + timeout
    nap, stale_inode = 0.001, None
    while True:
        try:
            opened = open_object(path)
        except PermissionError:
            st = os.stat(path)
            sys.exit(f"ERROR [EACCES Permission denied] open({path!r}): it belongs to uid "
                     f"{st.st_uid} with mode {st.st_mode & 0o777:04o}; the writer can let "
                     f"others read with --mode 0644")
        if opened:
            fd, writable = opened
            st = os.fstat(fd)
            if st.st_size not in (0, SIZE):
                sys.exit(f"ERROR {name} is {st.st_size} bytes, not {SIZE}: not a lesson-5 object")
            if st.st_size == SIZE and st.st_ino != stale_inode:
                access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
                with mmap.mmap(fd, SIZE, mmap.MAP_SHARED, access=access) as m:
                    os.close(fd)
                    fd = None
                    while time.monotonic() < end:
                        (state,) = struct.unpack_from("<I", m, STATE_OFF)
                        if state in (READY, ACKED):
                            break
                        time.sleep(nap)
                        nap = min(nap * 2, 0.025)
                    magic, version, state, wpid, _, seq, waddr, length = HEADER.unpack_from(m, 0)
                    if state in (READY, ACKED):
                        if magic != MAGIC or version != 1 or length > SIZE - HEADER.size:
                            sys.exit(f"ERROR {name} is not a lesson-5 object (magic {magic!r})")
                        try:
                            os.kill(wpid, 0)
                            alive = True
                        except ProcessLookupError:
                            alive = False
                        except PermissionError:
                            alive = True  # it exists, as another user
                        if alive:
                            msg = m[HEADER.size:HEADER.size + length].decode("utf-8", "replace")
                            print(f"python reader: the writer mapped it at {waddr:#x}")
                            print(f"python reader: message: {msg}")
                            print(f"python reader: sequence: {seq}")
                            if writable:  # acknowledge: reader pid, then the state word
                                struct.pack_into("<i", m, READER_PID_OFF, os.getpid())
                                struct.pack_into("<I", m, STATE_OFF, ACKED)
                                print("python reader: acknowledged")
                            else:
                                print("python reader: read-only, no acknowledgement")
                            return 0
                        print(f"stale: writer pid {wpid} is gone; waiting for a new one")
                        stale_inode = st.st_ino
            if fd is not None:
                os.close(fd)
        if time.monotonic() >= end:
            sys.exit(f"ERROR no ready lesson-5 object {name} within {timeout:g} s")
        time.sleep(nap)
        nap = min(nap * 2, 0.025)


if __name__ == "__main__":
    sys.exit(main())
