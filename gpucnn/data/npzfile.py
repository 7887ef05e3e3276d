"""Reading an .npz (a zip of .npy entries) without trusting its headers.

numpy.load believes each entry's header: one that declares a (10**12,) array makes it
allocate terabytes before it finds the entry is a kilobyte long, and a deflated entry can
claim to inflate to anything. Here every entry's header is read first and checked against
what the zip can physically hold, before any array memory is allocated:
- the data an entry's header declares must fit in the entry's size in the zip directory;
- a deflated entry cannot inflate more than deflate's ratio limit (about 1032:1), and
  zipfile stops reading at the size the directory declares (and checks the CRC);
- all the entries read together must fit in the machine's memory.
Pickled (object) entries are refused from their header, without unpickling anything.
"""
import math
import os
import zipfile

import numpy

from gpucnn.errors import GpucnnError

ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with entries, an empty zip
DEFLATE_MAX_RATIO = 1032  # deflate emits at most 258 bytes per 2 bits of input (zlib's tech notes)
MAX_HEADER = 10000        # numpy's own limit for a trusted .npy header


def inflate_bound(compressed_size):
    """The most bytes `compressed_size` bytes of deflate (or gzip) data can inflate to."""
    return DEFLATE_MAX_RATIO * compressed_size + (1 << 16)


def physical_memory():
    """Bytes of RAM on this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits_in_memory(nbytes, path, what, error):
    ram = physical_memory()
    if ram and nbytes > ram:
        raise error(f"{path}: {what} declares {nbytes / 2**30:,.1f} GiB of data, more than this "
                    f"machine's {ram / 2**30:,.1f} GiB of memory; refusing to load it")


def read_npz(path, *, error, keys=None, max_bytes=None):
    """{entry name without .npy: array} for the entries in `keys` (all if None) of the .npz at
    `path`; any problem is `error(message)` (a GpucnnError subclass) naming the file.
    `max_bytes` caps what the entries may declare in all (default: the machine's memory)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror})") from None
    if magic not in ZIP_MAGICS:
        raise error(f"{path}: not an .npz (zip) file" + (" (it is empty)" if not magic else ""))
    try:
        with zipfile.ZipFile(path) as z:
            infos = {i.filename[:-4]: i for i in z.infolist() if i.filename.endswith(".npy")}
            wanted = {k: i for k, i in infos.items() if keys is None or k in keys}
            headers = {k: _header(z, k, info, path, error) for k, info in wanted.items()}
            declared = sum(h[3] for h in headers.values())
            if max_bytes is not None and declared > max_bytes:
                raise error(f"{path}: its entries declare {declared:,} bytes, more than the {max_bytes:,} expected")
            check_fits_in_memory(declared, path, "its arrays", error)
            arrays = {}
            for k, info in wanted.items():
                with z.open(info) as f:
                    arrays[k] = numpy.lib.format.read_array(f, allow_pickle=False, max_header_size=MAX_HEADER)
                if arrays[k].shape != headers[k][0]:
                    raise error(f"{path}: entry {k} changed shape while read (corrupt file)")
            return arrays
    except GpucnnError:
        raise
    except MemoryError:
        raise error(f"{path}: not enough memory to load its arrays") from None
    except Exception as e:  # a damaged zip or header raises many types (zipfile, zlib, struct, numpy)
        raise error(f"{path}: not a readable .npz (truncated or corrupt?): "
                    f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")) from None


def _header(z, key, info, path, error):
    """(shape, fortran_order, dtype, data bytes) of one entry, checked against its zip sizes."""
    if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > inflate_bound(info.compress_size):
        raise error(f"{path}: entry {key} claims to inflate {info.compress_size:,} bytes to "
                    f"{info.file_size:,}, more than deflate can (a corrupt file or a zip bomb)")
    with z.open(info) as f:
        version = numpy.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = numpy.lib.format.read_array_header_1_0(f, max_header_size=MAX_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = numpy.lib.format.read_array_header_2_0(f, max_header_size=MAX_HEADER)
        else:
            raise error(f"{path}: entry {key} is .npy format version {version}, which gpucnn does not read")
        offset = f.tell()
    if dtype.hasobject:
        raise error(f"{path}: not a readable .npz: entry {key} holds Python objects (a pickle), "
                    f"which gpucnn never loads")
    nbytes = math.prod(shape) * dtype.itemsize  # Python ints: a hostile header cannot overflow
    held = info.file_size - offset
    if nbytes > held:
        raise error(f"{path}: entry {key} declares a {dtype} array of shape {shape} ({nbytes:,} bytes) "
                    f"but holds only {max(held, 0):,} bytes (corrupt or truncated)")
    return shape, fortran, dtype, nbytes
