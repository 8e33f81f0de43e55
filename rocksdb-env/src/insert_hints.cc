// A prefix extractor for RocksDB's memtable insert hints
// (`memtable_insert_with_hint_prefix_extractor`) on Skald's per-stream
// column families.
//
// RocksDB's memtable is a skip list; an insert without a hint searches it
// from the top, about log2(entries) key comparisons, each a likely cache
// miss once the memtable is large. With the option set, the memtable keeps,
// for every prefix the extractor returns, where the last key with that
// prefix went, and the next insert with the prefix starts its search there.
// Skald's appends write, per stream, the next key of the same run:
// `stream_index` keys are `stream bytes, 0x00, revision (u64 BE)` with the
// revision one past the last, and `streams` keys are the stream's name,
// rewritten with each append. The prefix here is the key up to and including
// its first 0x00 (the stream of a `stream_index` key), or the whole key when
// it has none (a `streams` key): consecutive appends to a stream then insert
// next to the hint, without a search from the top.
//
// A hint only chooses where a search starts; the skip list checks it and
// searches from higher up when it is stale, so any prefix is correct. Each
// prefix costs the memtable about 250 bytes of its own arena (counted in its
// size, so it flushes sooner) plus a hash map entry, until it is flushed.

#include <cstring>
#include <memory>
#include <string>

#include "rocksdb/slice.h"
#include "rocksdb/slice_transform.h"
#include "rocksdb/utilities/object_registry.h"
#include "rocksdb/version.h"

namespace {

class StreamKeyPrefix : public rocksdb::SliceTransform {
 public:
  static const char* kClassName() { return "skald.StreamKeyPrefix"; }
  const char* Name() const override { return kClassName(); }

  rocksdb::Slice Transform(const rocksdb::Slice& key) const override {
    const void* zero = std::memchr(key.data(), 0, key.size());
    if (zero == nullptr) {
      return key;
    }
    const size_t len = static_cast<const char*>(zero) - key.data() + 1;
    return rocksdb::Slice(key.data(), len);
  }

  bool InDomain(const rocksdb::Slice& /*key*/) const override { return true; }
};

}  // namespace

// Registers the extractor with RocksDB's default object library under
// `skald.StreamKeyPrefix`, so that an options string can name it. Returns
// false when the headers this was compiled against are not the linked
// library's version. Safe to call more than once (the last registration
// wins; all are the same).
extern "C" bool skald_register_stream_key_prefix() {
  const std::string headers = std::to_string(ROCKSDB_MAJOR) + "." +
                              std::to_string(ROCKSDB_MINOR) + "." +
                              std::to_string(ROCKSDB_PATCH);
  if (rocksdb::GetRocksVersionAsString(true) != headers) {
    return false;
  }
  rocksdb::ObjectLibrary::Default()->AddFactory<const rocksdb::SliceTransform>(
      StreamKeyPrefix::kClassName(),
      [](const std::string& /*uri*/,
         std::unique_ptr<const rocksdb::SliceTransform>* guard,
         std::string* /*errmsg*/) {
        guard->reset(new StreamKeyPrefix());
        return guard->get();
      });
  return true;
}
