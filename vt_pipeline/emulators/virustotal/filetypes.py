"""The file types of the synthetic corpus, with the metadata VirusTotal reports for each.

Weights follow a Livehunt feed's usual mix (mostly Windows executables and documents). Types that
share magic bytes (ZIP, DOCX, APK) also share a header, which keeps corpus hashing cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

_MZ = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00"
_PK = b"PK\x03\x04\x14\x00\x06\x00\x08\x00"
_OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


@dataclass(frozen=True, slots=True)
class FileType:
    extension: str | None  # VT's type_extension; absent for some types (ELF)
    type_tag: str
    description: str
    magic: str
    type_tags: tuple[str, ...]
    header: bytes
    weight: int
    can_be_huge: bool = False  # installers and archives reach the > 50 MiB class
    signature: bytes = b""  # the magic an upload is recognised by (default: the whole header)

    def recognises(self, head: bytes) -> bool:
        return bool(self.header) and head.startswith(self.signature or self.header)


FILE_TYPES: tuple[FileType, ...] = (
    FileType(
        "exe",
        "peexe",
        "Win32 EXE",
        "PE32 executable (GUI) Intel 80386, for MS Windows",
        ("executable", "windows", "win32", "pe", "peexe"),
        _MZ,
        30,
        can_be_huge=True,
        signature=b"MZ",
    ),
    FileType(
        "dll",
        "pedll",
        "Win32 DLL",
        "PE32+ executable (DLL) (GUI) x86-64, for MS Windows",
        ("executable", "windows", "win32", "pe", "pedll"),
        _MZ,
        10,
        signature=b"MZ",
    ),
    FileType(
        "zip",
        "zip",
        "ZIP",
        "Zip archive data, at least v2.0 to extract, compression method=deflate",
        ("compressed", "zip"),
        _PK,
        10,
        can_be_huge=True,
        signature=b"PK\x03\x04",
    ),
    FileType(
        "doc",
        "doc",
        "MS Word Document",
        "Composite Document File V2 Document, Little Endian, Os: Windows, Code page: 1252",
        ("document", "msoffice", "text", "word", "doc"),
        _OLE,
        6,
    ),
    FileType(
        "docx",
        "docx",
        "Office Open XML Document",
        "Microsoft Word 2007+",
        ("document", "msoffice", "text", "word", "docx"),
        _PK,
        6,
    ),
    FileType(
        "xlsx",
        "xlsx",
        "Office Open XML Spreadsheet",
        "Microsoft Excel 2007+",
        ("document", "msoffice", "spreadsheet", "excel", "xlsx"),
        _PK,
        3,
    ),
    FileType(
        "pdf",
        "pdf",
        "PDF",
        "PDF document, version 1.7",
        ("document", "pdf"),
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n",
        8,
        signature=b"%PDF-",
    ),
    FileType(
        "js",
        "javascript",
        "JavaScript",
        "ASCII text, with very long lines (2048), with CRLF line terminators",
        ("source", "javascript"),
        b"var _0x4f2a=['",
        6,
    ),
    FileType(
        "apk",
        "android",
        "Android",
        "Zip archive data, at least v2.0 to extract",
        ("executable", "mobile", "android", "apk"),
        _PK,
        5,
    ),
    FileType(
        None,
        "elf",
        "ELF",
        "ELF 32-bit LSB executable, ARM, EABI5 version 1 (SYSV), statically linked, stripped",
        ("executable", "linux", "elf"),
        b"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        6,
        signature=b"\x7fELF",
    ),
    FileType(
        "ps1",
        "powershell",
        "Powershell",
        "ASCII text, with very long lines (4096), with no line terminators",
        ("source", "powershell", "ps1"),
        b"$ErrorActionPreference = 'SilentlyContinue';",
        4,
    ),
    FileType(
        "lnk",
        "lnk",
        "Windows shortcut",
        "MS Windows shortcut, Item id list present, Has Relative path, ctime=Mon Jan  1 1601",
        ("windows", "lnk"),
        b"L\x00\x00\x00\x01\x14\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00",
        3,
    ),
    FileType(
        "msi",
        "msi",
        "Windows Installer",
        "Composite Document File V2 Document, MSI Installer",
        ("installer", "windows", "msi"),
        _OLE,
        3,
    ),
)

# Plausible base names; an extension is appended when the type has one.
BASE_NAMES: tuple[str, ...] = (
    "invoice_2026_11",
    "setup",
    "update",
    "payment_confirmation",
    "scan_0042",
    "report_q3",
    "installer_x64",
    "purchase_order",
    "document",
    "shipping_notice",
    "svchost",
    "chrome_update",
    "readme",
    "payload",
    "loader",
    "bot",
    "tmp8f3a",
    "DHL_AWB_8812",
    "salary_review",
    "contract_signed",
)

UNKNOWN_TYPE = FileType(None, "unknown", "unknown", "data", (), b"", 0)


def sniff(head: bytes) -> FileType:
    """The first catalogue type whose magic starts ``head`` (for uploads), else UNKNOWN_TYPE.

    Generic types come first in the catalogue, so a ZIP upload is a ZIP, not a DOCX.
    """
    return next((t for t in FILE_TYPES if t.recognises(head)), UNKNOWN_TYPE)
