"""The kernel cache's data files are named by key (numerics/cache.py): processes that compile the
same function at once never pair one signature's index entry with another signature's code."""
from numerics.cache import KeyNamedCacheFile


def interleaved_saves(cache_file_class, directory):
    """Process B saves a signature, from an index it read before A saved, while A is in the
    middle of saving another signature of the same function (between its two file writes).
    Under this interleaving numba's own IndexDataCacheFile answers signature b with code a."""
    a = cache_file_class(str(directory), "kernel-10.py311", "stamp")
    b = cache_file_class(str(directory), "kernel-10.py311", "stamp")
    b._load_index = lambda: {}
    write_data = a._save_data

    def a_writes_data_after_b_saved(name, data):
        b.save(("signature b",), b"code b")
        write_data(name, data)

    a._save_data = a_writes_data_after_b_saved
    a.save(("signature a",), b"code a")
    return cache_file_class(str(directory), "kernel-10.py311", "stamp")


def test_interleaved_saves_never_serve_another_signatures_code(tmp_path):
    reader = interleaved_saves(KeyNamedCacheFile, tmp_path)
    # an entry lost from the index costs a recompilation (None); a wrong answer is never given
    assert reader.load(("signature a",)) in (b"code a", None)
    assert reader.load(("signature b",)) in (b"code b", None)
    assert reader.load(("signature a",)) or reader.load(("signature b",))
