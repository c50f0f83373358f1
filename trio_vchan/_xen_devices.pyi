# Typed surface of the cffi module built by build_xen_devices.py (the parts trio_vchan uses).
from typing import Any

class _FFI:
    def new(self, cdecl: str, init: Any = ...) -> Any: ...
    def buffer(self, cdata: Any, size: int = ...) -> Any: ...
    def sizeof(self, cdecl_or_cdata: Any) -> int: ...
    def offsetof(self, cdecl: str, *fields_or_indexes: str | int) -> int: ...
    def from_buffer(self, cdecl: str, python_buffer: Any, require_writable: bool = ...) -> Any: ...
    def cast(self, cdecl: str, value: Any) -> Any: ...

class _Lib:
    IOCTL_EVTCHN_BIND_INTERDOMAIN: int
    IOCTL_EVTCHN_BIND_UNBOUND_PORT: int
    IOCTL_EVTCHN_UNBIND: int
    IOCTL_EVTCHN_NOTIFY: int
    IOCTL_EVTCHN_RESET: int
    IOCTL_GNTALLOC_ALLOC_GREF: int
    IOCTL_GNTALLOC_DEALLOC_GREF: int
    IOCTL_GNTALLOC_SET_UNMAP_NOTIFY: int
    GNTALLOC_FLAG_WRITABLE: int
    IOCTL_GNTDEV_MAP_GRANT_REF: int
    IOCTL_GNTDEV_UNMAP_GRANT_REF: int
    IOCTL_GNTDEV_SET_UNMAP_NOTIFY: int
    UNMAP_NOTIFY_CLEAR_BYTE: int
    UNMAP_NOTIFY_SEND_EVENT: int

ffi: _FFI
lib: _Lib
