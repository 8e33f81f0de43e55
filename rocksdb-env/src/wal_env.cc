// The RocksDB `Env` Skald opens its store with: the default one, except that
// a write-ahead log file's preallocation extends the file's size.
//
// RocksDB preallocates each WAL (about 1.1 x the write buffer) with
// `fallocate(FALLOC_FL_KEEP_SIZE)`, so every append still grows the file, and
// every `fdatasync` must also commit the new size to the filesystem's journal.
// Without `KEEP_SIZE` the size is set once per preallocated block and a small
// append's `fdatasync` writes the data alone: on this project's machines
// (ext4) a `write` + `fdatasync` of 256 bytes runs 1.3 to 1.5 times as often
// per second that way (docs/benchmarks.md, "Issue 11, seventh pass").
// RocksDB's own POSIX file system says the same in a TODO next to the flag
// (env/fs_posix.cc, `OptimizeForLogWrite`).
//
// What this changes is safe by RocksDB's own rules: a WAL closed normally is
// trimmed to what was written (`PosixWritableFile::Close`); after a crash its
// zero-filled tail reads as `kZeroType` padding, which the log reader skips
// without reporting a corruption; a checkpoint copies an open WAL only up to
// its flushed size. The end-to-end tests kill the server with a preallocated
// WAL and find every acknowledged event after the restart.

#include <memory>
#include <string>

#include "rocksdb/env.h"
#include "rocksdb/file_system.h"
#include "rocksdb/options.h"
#include "rocksdb/version.h"

// The C API's handle of an `Env` (db/c.cc): `rocksdb_env_destroy` deletes
// `rep` unless `is_default`.
struct rocksdb_env_t {
  rocksdb::Env* rep;
  bool is_default;
};

namespace {

class PreallocatedWalFileSystem : public rocksdb::FileSystemWrapper {
 public:
  explicit PreallocatedWalFileSystem(
      const std::shared_ptr<rocksdb::FileSystem>& target)
      : rocksdb::FileSystemWrapper(target) {}

  static const char* kClassName() { return "SkaldPreallocatedWalFileSystem"; }
  const char* Name() const override { return kClassName(); }

  rocksdb::FileOptions OptimizeForLogWrite(
      const rocksdb::FileOptions& file_options,
      const rocksdb::DBOptions& db_options) const override {
    rocksdb::FileOptions optimized =
        target()->OptimizeForLogWrite(file_options, db_options);
    optimized.fallocate_with_keep_size = false;
    return optimized;
  }
};

}  // namespace

// A new `Env` on the default one's threads and files, WALs preallocated as
// above; the caller owns it (`rocksdb_env_destroy`). Null when the headers
// this was compiled against are not the linked library's version (the class
// layouts would not be known to match).
extern "C" rocksdb_env_t* skald_preallocated_wal_env() {
  const std::string headers = std::to_string(ROCKSDB_MAJOR) + "." +
                              std::to_string(ROCKSDB_MINOR) + "." +
                              std::to_string(ROCKSDB_PATCH);
  if (rocksdb::GetRocksVersionAsString(true) != headers) {
    return nullptr;
  }
  auto fs = std::make_shared<PreallocatedWalFileSystem>(
      rocksdb::FileSystem::Default());
  auto* env = new rocksdb_env_t;
  env->rep = rocksdb::NewCompositeEnv(fs).release();
  env->is_default = false;
  return env;
}
