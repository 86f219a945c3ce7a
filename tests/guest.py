"""The tiny guest of the "qemu" tier: a 512-byte boot sector in a 1 MiB raw image, and its domain XML.

No kernel, no assembler: the boot sector is real-mode x86 code written out as bytes below. SeaBIOS
loads it at 0x7c00 from the IDE disk; it writes ``pvc guest up`` to COM1 (port 0x3f8), then halts
with interrupts on and writes one ``.`` every few BIOS timer ticks (about 4 a second) for ever. A
growing serial log therefore shows that the guest still runs (after a shutdown request it ignores,
after a live migration); the CPU sits in ``hlt`` between ticks, so the guest costs almost nothing.

The guest has no ACPI: ``shutdown()`` returns at once and the guest keeps running.
"""

from __future__ import annotations

import os
from xml.sax.saxutils import quoteattr, escape

BOOT_MESSAGE = "pvc guest up"
TICK_CHAR = "."
TICKS_PER_DOT = 4  # BIOS timer ticks (18.2 a second) between two dots
IMAGE_SIZE = 1024 * 1024
MSG_OFFSET = 50  # where the message starts in the sector (checked below)


def boot_sector() -> bytes:
    """The 512-byte MBR: real-mode code, the message, the 0x55AA signature."""
    msg_addr = 0x7C00 + MSG_OFFSET
    code = bytes([
        0xFA,                                   # 0   cli
        0x31, 0xC0,                             # 1   xor ax, ax
        0x8E, 0xD8,                             # 3   mov ds, ax
        0x8E, 0xD0,                             # 5   mov ss, ax
        0xBC, 0x00, 0x7C,                       # 7   mov sp, 0x7c00
        0xBA, 0xF8, 0x03,                       # 10  mov dx, 0x3f8          ; COM1
        0xBE, msg_addr & 0xFF, msg_addr >> 8,   # 13  mov si, MSG
        0xFC,                                   # 16  cld
        0xE8, 0x15, 0x00,                       # 17  call PUTS (41 - 20)
        0xFB,                                   # 20  sti
        # MAIN:
        0x8B, 0x1E, 0x6C, 0x04,                 # 21  mov bx, [0x046c]       ; BIOS tick count
        0x83, 0xC3, TICKS_PER_DOT,              # 25  add bx, TICKS_PER_DOT
        # WAIT:
        0xF4,                                   # 28  hlt                    ; until the next interrupt
        0xA1, 0x6C, 0x04,                       # 29  mov ax, [0x046c]
        0x39, 0xD8,                             # 32  cmp ax, bx
        0x75, 0xF8,                             # 34  jne WAIT (28 - 36)
        0xB0, ord(TICK_CHAR),                   # 36  mov al, '.'
        0xEE,                                   # 38  out dx, al
        0xEB, 0xEC,                             # 39  jmp MAIN (21 - 41)
        # PUTS: write the NUL-terminated string at ds:si to port dx
        0xAC,                                   # 41  lodsb
        0x84, 0xC0,                             # 42  test al, al
        0x74, 0x03,                             # 44  jz RET (49 - 46)
        0xEE,                                   # 46  out dx, al
        0xEB, 0xF8,                             # 47  jmp PUTS (41 - 49)
        0xC3,                                   # 49  ret
    ])
    assert len(code) == MSG_OFFSET, len(code)
    sector = code + BOOT_MESSAGE.encode() + b"\r\n\0"
    assert len(sector) <= 510
    return sector.ljust(510, b"\0") + b"\x55\xaa"


def write_image(path: str) -> None:
    """A 1 MiB raw disk whose first sector is the boot sector (one image per VM: QEMU locks it)."""
    with open(path, "wb") as f:
        f.write(boot_sector())
        f.truncate(IMAGE_SIZE)
    os.chmod(path, 0o644)


def domain_xml(name: str, uuid: str, image: str, serial_log: str, memory_mib: int = 64) -> str:
    """A TCG domain (no KVM needed): 1 vCPU, machine pc, the image as IDE disk, COM1 appended to
    ``serial_log``, no graphics, no video, no balloon, no ACPI."""
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <uuid>{escape(uuid)}</uuid>
  <memory unit='MiB'>{int(memory_mib)}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='hd'/>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file={quoteattr(image)}/>
      <target dev='hda' bus='ide'/>
    </disk>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path={quoteattr(serial_log)} append='on'/>
      <target port='0'/>
    </serial>
    <video>
      <model type='none'/>
    </video>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def write_guest(name: str, uuid: str, image: str, serial_log: str, memory_mib: int = 64) -> str:
    """Write the guest's image at ``image`` and return its domain XML. ``image`` and ``serial_log``
    must lie outside the second node's bind mounts (the same path on both nodes), in a directory the
    ``libvirt-qemu`` user can traverse."""
    write_image(image)
    return domain_xml(name, uuid, image, serial_log, memory_mib)


def serial_output(serial_log: str) -> str:
    """What the guest wrote to COM1 so far ("" before QEMU created the file)."""
    try:
        with open(serial_log, "rb") as f:
            return f.read().decode("ascii", "replace")
    except FileNotFoundError:
        return ""
