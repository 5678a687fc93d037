"""A seccomp filter for the sandbox: threads yes, new processes no.

Root is exempt from RLIMIT_NPROC, so on a machine where the grader runs as root a process limit
cannot bound a fork bomb; refusing fork, vfork and process-creating clone does, on any user. A
submission has no reason to start programs (`!pip` cannot reach a network anyway). clone3 gets
ENOSYS, which makes the C library fall back to clone for threads, where the flags can be read.
"""

import errno
import os
import platform
import struct

LOAD_WORD, JUMP_EQUAL, JUMP_SET, RETURN = 0x20, 0x15, 0x45, 0x06
ALLOW = 0x7FFF0000
ERRNO = 0x00050000
KILL_PROCESS = 0x80000000
CLONE_THREAD = 0x00010000
SYSCALL_NUMBER, ARCHITECTURE, FIRST_ARGUMENT = 0, 4, 16
ARCHITECTURES = {  # audit architecture, then the numbers of fork, vfork, clone, clone3 (None: no such call)
    "x86_64": (0xC000003E, 57, 58, 56, 435),
    "aarch64": (0xC00000B7, None, None, 220, 435),
}


def _instruction(code: int, k: int, jump_true: int = 0, jump_false: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jump_true, jump_false, k)


def no_new_processes() -> bytes | None:
    """The filter as bytes for `bwrap --seccomp FD`; None on an architecture it does not know."""
    numbers = ARCHITECTURES.get(platform.machine())
    if numbers is None:
        return None
    architecture, fork, vfork, clone, clone3 = numbers
    refused = [number for number in (fork, vfork) if number is not None]
    program = [
        _instruction(LOAD_WORD, ARCHITECTURE),
        _instruction(JUMP_EQUAL, architecture, 1, 0),
        _instruction(RETURN, KILL_PROCESS),
    ]
    program.append(_instruction(LOAD_WORD, SYSCALL_NUMBER))
    for number in refused:
        program += [_instruction(JUMP_EQUAL, number, 0, 1), _instruction(RETURN, ERRNO | errno.EPERM)]
    program += [_instruction(JUMP_EQUAL, clone3, 0, 1), _instruction(RETURN, ERRNO | errno.ENOSYS)]
    program += [
        _instruction(JUMP_EQUAL, clone, 0, 4),  # not clone: on to the final ALLOW
        _instruction(LOAD_WORD, FIRST_ARGUMENT),
        _instruction(JUMP_SET, CLONE_THREAD, 0, 1),
        _instruction(RETURN, ALLOW),
        _instruction(RETURN, ERRNO | errno.EPERM),
    ]
    program.append(_instruction(RETURN, ALLOW))
    return b"".join(program)


def filter_fd() -> int | None:
    """A pipe's read end holding the filter, for bwrap to read (the caller closes it after the start)."""
    program = no_new_processes()
    if program is None:
        return None
    read_end, write_end = os.pipe()
    os.write(write_end, program)
    os.close(write_end)
    return read_end
