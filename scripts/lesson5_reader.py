#!/usr/bin/env python3
"""Read lesson-5's POSIX shared memory object from Python.

    python3 scripts/lesson5_reader.py [/NAME] [--timeout SECS]

NAME defaults to /shm-lessons-5-<your user name>, as for the Rust reader.
The script waits (polling, never longer than --timeout) until the writer's
object exists and is marked READY, prints the message and the sequence
number, then acknowledges. It removes nothing: the writer does.

The layout is the one in lessons/05-unrelated/src/layout.rs: a header at
fixed offsets (never pointers), parsed here with struct. Its numbers are in
the machine's own byte order, as the Rust writer and the C reader store and
read them, so every struct format here starts with "=" (native byte order,
standard sizes, no padding), never "<" or ">".

It opens the object with multiprocessing.shared_memory.SharedMemory(name=...),
which shm_opens and mmaps /dev/shm/NAME. One trap: up to Python 3.12 that
also registers the name with the resource tracker, which *unlinks the
writer's object* when this script exits (and warns about a "leaked" segment).
Python 3.13 added SharedMemory(name, track=False); before it, the script
unregisters the name at once. SharedMemory always opens read-write, so when
the writer's --mode lets us read only, the script maps the file read-only
with mmap instead.

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
from multiprocessing import resource_tracker, shared_memory

SIZE = 4096
MAGIC = b"SHMLSN5\0"
# magic, version, state, writer pid, reader pid, sequence, writer addr, length
HEADER = struct.Struct("=8sIIiiQQI4x")  # 48 bytes: the message starts at 48
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


class Mapped:
    """The object, mapped: `buf` (a memoryview), `writable`, `close()`."""

    def __init__(self, name):
        self.shm = None
        try:
            if sys.version_info >= (3, 13):
                self.shm = shared_memory.SharedMemory(name=name.lstrip("/"), track=False)
            else:
                self.shm = shared_memory.SharedMemory(name=name.lstrip("/"))
                # Or the tracker would shm_unlink the writer's object at exit.
                resource_tracker.unregister(self.shm._name, "shared_memory")
            self.buf, self.writable = self.shm.buf, True
        except PermissionError:  # read allowed (--mode 0644), write not
            fd = os.open("/dev/shm/" + name.lstrip("/"), os.O_RDONLY)  # may raise again
            try:
                size = os.fstat(fd).st_size
                if size == 0:
                    raise ValueError("cannot mmap an empty file")
                self.map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
            finally:
                os.close(fd)
            self.buf, self.writable = memoryview(self.map), False

    def close(self):
        if self.shm is not None:
            self.shm.close()  # munmap: the object stays, it is the writer's
        else:
            self.buf.release()
            self.map.close()


def attach(name):
    """A Mapped, or None while the object does not exist or has no size yet."""
    try:
        return Mapped(name)
    except FileNotFoundError:
        return None
    except ValueError:  # size 0: the writer is between shm_open and ftruncate
        return None


def wait_ready(buf, end, nap):
    """Poll the state word until READY or ACKED, or until `end`."""
    while True:
        (state,) = struct.unpack_from("=I", buf, STATE_OFF)
        if state in (READY, ACKED) or time.monotonic() >= end:
            return state, nap
        time.sleep(nap)
        nap = min(nap * 2, 0.025)


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user


def main():
    name, timeout = parse_args(sys.argv[1:])
    end = time.monotonic() + timeout
    nap, stale = 0.001, None
    while True:
        try:
            m = attach(name)
        except PermissionError:
            st = os.stat("/dev/shm/" + name.lstrip("/"))
            sys.exit(f"ERROR [EACCES Permission denied] shm_open({name!r}): it belongs to uid "
                     f"{st.st_uid} with mode {st.st_mode & 0o777:04o}; the writer can let "
                     f"others read with --mode 0644")
        if m is not None:
            try:
                if len(m.buf) != SIZE:
                    sys.exit(f"ERROR {name} is {len(m.buf)} bytes, not {SIZE}: not a lesson-5 object")
                state, nap = wait_ready(m.buf, end, nap)
                magic, version, state, wpid, _, seq, waddr, length = HEADER.unpack_from(m.buf, 0)
                if state in (READY, ACKED) and (wpid, seq) != stale:
                    if magic != MAGIC or version != 1 or length > SIZE - HEADER.size:
                        sys.exit(f"ERROR {name} is not a lesson-5 object (magic {magic!r})")
                    if alive(wpid):
                        msg = bytes(m.buf[HEADER.size:HEADER.size + length]).decode("utf-8", "replace")
                        print(f"python reader: the writer mapped it at {waddr:#x}")
                        print(f"python reader: message: {msg}")
                        print(f"python reader: sequence: {seq}")
                        if m.writable:  # acknowledge: reader pid, then the state word
                            struct.pack_into("=i", m.buf, READER_PID_OFF, os.getpid())
                            struct.pack_into("=I", m.buf, STATE_OFF, ACKED)
                            print("python reader: acknowledged")
                        else:
                            print("python reader: read-only, no acknowledgement")
                        return 0
                    print(f"stale: writer pid {wpid} is gone; waiting for a new one")
                    stale = (wpid, seq)
            finally:
                m.close()
        if time.monotonic() >= end:
            sys.exit(f"ERROR no ready lesson-5 object {name} within {timeout:g} s")
        time.sleep(nap)
        nap = min(nap * 2, 0.025)


if __name__ == "__main__":
    sys.exit(main())
