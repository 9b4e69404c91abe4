"""ioctl requests the filter did not allow outright.

The filter passes the terminal, FIO* and interface-query requests to the
host ([host.rules.ioctl] in the profiles); every other request reaches this
handler. The decision uses only the request number, an integer the caller
cannot change after the notification, so answering CONTINUE for an allowed
request keeps DESIGN.md's rule 1 (no pointer argument is inspected).

* TIOCSTI (push a byte into a terminal's input) and TIOCLINUX (console
  selection, which can paste): refused with EIO, as Linux answers TIOCSTI
  when ``dev.tty.legacy_tiocsti`` is 0. A container attached to its
  caller's terminal could otherwise type commands into the shell that
  started it (the CVE-2016-7545 / CVE-2017-5226 class).
* Everything else: the kernel decides (device drivers check their own
  permissions on the fd).
"""

from __future__ import annotations

import errno

from pysandbox.oci import kernel
from pysandbox.sentry.loop import CONTINUE, Call, Errno, Handler, Result

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

TIOCSTI: Final = 0x5412
TIOCLINUX: Final = 0x541C
REFUSED: Final = frozenset({TIOCSTI, TIOCLINUX})
_EIO: Final = Errno(errno.EIO)


def ioctl(call: Call) -> Result:
    """ioctl(fd, request, arg): the request is a 32-bit int (the kernel ignores the high half)."""
    if call.args[1] & 0xFFFFFFFF in REFUSED:
        return _EIO
    return CONTINUE


def routes() -> dict[int, Handler]:
    return {kernel.SYS_IOCTL: ioctl}
