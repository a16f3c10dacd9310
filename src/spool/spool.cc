#include "ringmail/spool/spool.h"

#include "ringmail/core/hex.h"
#include "ringmail/core/panic.h"
#include "ringmail/spool/crc32c.h"

#include "format.h"
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace ringmail::spool {

namespace {

constexpr std::size_t first_chunk = 4096;
constexpr std::size_t max_chunk = 256 << 10;
constexpr std::uint64_t index_limit = 1ull << queue_id_index_bits;
constexpr std::uint64_t seq_limit = 1ull << 32;
constexpr std::size_t iov_max = IOV_MAX;
constexpr std::uint32_t slot_bits = 20;
constexpr std::uint32_t slot_mask = (1u << slot_bits) - 1;
constexpr const char* journal_name = "journal";
constexpr const char* journal_tmp_name = "journal.tmp";
constexpr const char* segment_prefix = "segment-";
constexpr const char* message_prefix = "message-";
// A streaming message's file: keys in the segment map beside the sequence numbers.
constexpr std::uint64_t message_file_key = 1ull << 63;
// Room for the added headers (Received, later DKIM-Signature) between a streamed message's
// envelope and its body, which is written before they are known.
constexpr std::uint64_t added_headers_room = 16 << 10;
constexpr std::size_t stream_chunk = 64 << 10;      // chunk size once a message streams
constexpr std::uint64_t stream_flush = 128 << 10;   // buffered bytes that make a stream write
constexpr std::uint64_t pressure_spill = 16 << 10;  // over budget: messages this big stream
// Bounds of one ring chain (the SQ has 4096 entries): streamed records per commit batch, and
// files per stream batch.
constexpr std::size_t max_streamed_per_batch = 256;
constexpr std::size_t max_stream_files = 1024;
// Runtime compaction: its image and tail grow in blocks (never a reallocating copy of tens of
// MiB on the loop), and what it leaves behind is released in bounded slices per batch: blocks
// freed a few per batch, and the replaced journal (unlinked, still open) closed on the ring by an
// io-wq worker: its close on the loop would free all its extents there (tens of ms for 80 MB,
// and a wait on the filesystem's own journal besides).
constexpr std::size_t entry_block = 1 << 20;
constexpr std::size_t release_blocks_per_step = 4;

std::string file_name(const char* prefix, std::uint64_t seq) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%s%016llX", prefix, static_cast<unsigned long long>(seq));
    return buf;
}

std::string segment_name(std::uint64_t seq) {
    return file_name(segment_prefix, seq);
}

bool parse_file_name(std::string_view name, const char* prefix, std::uint64_t& seq) {
    const std::string_view p = prefix;
    if (name.size() != p.size() + 16 || name.substr(0, p.size()) != p)
        return false;
    seq = 0;
    for (char c : name.substr(p.size())) {
        int v;
        if (c >= '0' && c <= '9') {
            v = c - '0';
        } else if (c >= 'A' && c <= 'F') {
            v = c - 'A' + 10;
        } else {
            return false;
        }
        seq = seq << 4 | unsigned(v);
    }
    return seq > 0 && seq < seq_limit;
}

bool parse_segment_name(std::string_view name, std::uint64_t& seq) {
    return parse_file_name(name, segment_prefix, seq);
}

failure errno_failure(int err) {
    return failure(from_errno(err));
}

// Synchronous write of a whole buffer (start-up only).
int write_all(int fd, const char* p, std::size_t n, std::uint64_t off) {
    while (n > 0) {
        const ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(off));
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (w == 0)
            return EIO;
        p += w;
        n -= std::size_t(w);
        off += std::uint64_t(w);
    }
    return 0;
}

// Message bytes not yet on disk. Each chunk charges its size to the spool's unwritten count for
// as long as it is allocated, whoever holds it (writer, pending record, batch in flight).
struct chunk {
    std::unique_ptr<char[]> data;
    std::size_t size = 0;
    std::size_t used = 0;
    std::uint64_t* charged = nullptr;

    chunk() = default;
    chunk(std::size_t n, std::uint64_t* counter)
        : data(std::make_unique_for_overwrite<char[]>(n)), size(n), charged(counter) {
        *charged += n;
    }
    chunk(chunk&& o) noexcept
        : data(std::move(o.data)),
          size(o.size),
          used(o.used),
          charged(std::exchange(o.charged, nullptr)) {}
    chunk& operator=(chunk&& o) noexcept {
        if (this != &o) {
            release();
            data = std::move(o.data);
            size = o.size;
            used = o.used;
            charged = std::exchange(o.charged, nullptr);
        }
        return *this;
    }
    chunk(const chunk&) = delete;
    chunk& operator=(const chunk&) = delete;
    ~chunk() { release(); }
    void release() noexcept {
        if (charged)
            *charged -= size;
        charged = nullptr;
        data.reset();
    }
};

// Encoded journal entries in fixed blocks: appending never moves what is there.
struct entry_buffer {
    std::vector<std::unique_ptr<char[]>> blocks;
    std::size_t last_used = entry_block;  // of blocks.back(); full when there is none
    std::uint64_t size = 0;

    void append(const char* p, std::size_t n) {
        while (n > 0) {
            if (last_used == entry_block) {
                blocks.push_back(std::make_unique_for_overwrite<char[]>(entry_block));
                last_used = 0;
            }
            const std::size_t k = std::min(n, entry_block - last_used);
            std::memcpy(blocks.back().get() + last_used, p, k);
            last_used += k;
            p += k;
            n -= k;
            size += k;
        }
    }
    std::size_t piece_size(std::size_t i) const {
        return i + 1 == blocks.size() ? last_used : entry_block;
    }
};

}  // namespace

queue_id_text format_queue_id(queue_id id) {
    queue_id_text t;
    for (int i = 15; i >= 0; --i, id >>= 4)
        t.digits[i] = core::hex_upper[id & 0xf];
    return t;
}

struct spool::segment {
    std::uint64_t seq = 0;
    int fd = -1;
    char* map = nullptr;
    std::uint64_t capacity = 0;       // mapped length; records are placed below it
    std::uint64_t append_offset = 0;  // next placement
    std::uint64_t live = 0;           // committed messages not done
    std::uint64_t inflight = 0;       // records placed here whose batch has not completed
    bool sealed = false;              // never appended to again
    std::uint64_t key = 0;            // in _segments: seq, or message_file_key | number
    bool message_file = false;        // one streamed message's own file (message-<N>)
    bool writing = false;             // message file: its message is not committed or failed yet
    unsigned stream_inflight = 0;     // stream batches in flight that write here
    std::error_code stream_error;     // a stream write here failed: its message fails
    // Ids of records in this file that are done (or whose batch failed): compaction keeps a done
    // entry for each while the file exists, so recovery never resurrects them.
    std::vector<queue_id> dead;
};

struct spool::location {
    segment* seg = nullptr;
    std::uint64_t offset = 0;
    format::record_header h;
    std::uint32_t rcpt_count = 0;
    // Committed journal state, kept so the journal can be compacted while running.
    std::vector<std::uint8_t> rcpt_state;  // per RCPT: 0 = none, else an outcome
    std::uint32_t attempts = 0;
    std::int64_t next_attempt = 0;
};

struct spool::writer {
    std::uint32_t generation = 0;
    bool open = false;
    std::string envelope;  // encoded at begin()
    std::uint32_t rcpt_count = 0;
    std::vector<chunk> body;
    std::uint64_t body_length = 0;
    std::uint32_t body_crc = 0;
    queue_id id = 0;  // drawn at begin(), so the Received header can name it
    // Streaming: the message's own file, where its body starts, and how many body bytes went
    // to stream batches already (`body` holds the bytes after them).
    segment* file = nullptr;
    std::uint64_t body_start = 0;
    std::uint64_t handed = 0;
    // The message failed (no file, a stream write failed): its bytes are dropped at once, so
    // that a session still reading to its end of data holds no budget.
    std::error_code error;
};

struct spool::record {
    queue_id id = 0;
    std::uint64_t token = 0;
    chunk meta;  // header + envelope + added headers, then the trailer (charged as unwritten)
    std::size_t meta_length = 0;  // without the trailer
    std::vector<chunk> body;
    format::record_header h;
    std::uint32_t rcpt_count = 0;
    segment* seg = nullptr;
    std::uint64_t offset = 0;
    std::error_code error;     // set when placement failed
    bool streamed = false;     // seg is its own file (set at finish), body partly written already
    std::uint64_t handed = 0;  // streamed: body bytes already written by stream batches
};

struct spool::batch {
    std::vector<record> records;
    std::vector<char> journal;    // encoded journal entries
    std::vector<queue_id> dones;  // applied in memory once the journal write commits
    std::vector<segment*> touched;
    std::uint64_t record_bytes = 0;
    bool dir_synced = false;       // fsyncs the directory (new message files, a rename)
    bool compaction_swap = false;  // also writes journal.tmp: the compaction ends with it
    bool releases_journal =
        false;  // its directory fsync makes the last compaction's rename durable
    commit_batch cb;
};

struct spool::stream_batch {
    std::vector<chunk> chunks;
    std::vector<segment*> files;
    commit_batch cb;
};

struct spool::compaction {
    int fd = -1;  // journal.tmp
    entry_buffer image;
    entry_buffer tail;
    char floor[format::journal_entry_size]{};
    std::uint64_t size = 0;           // of journal.tmp once the swap batch is written
    std::vector<std::uint64_t> segs;  // segment keys when the walk started
    std::size_t seg = 0;
    std::size_t dead = 0;
    std::size_t buckets = 0;  // _live.bucket_count() of the walk: a rehash restarts the walk
    std::size_t bucket = 0;
    bool walked = false;
    bool in_batch = false;  // the swap batch is in flight
};

// What a runtime compaction leaves: its blocks, and the journal it replaced. The old journal is
// truncated only once the rename is durable (a directory fsync completed after it): until then
// a crash recovers from it.
struct spool::release {
    std::vector<std::unique_ptr<char[]>> blocks;
    int old_journal_fd = -1;
    std::uint64_t old_journal_size = 0;
    std::uint64_t left = 0;  // of the old journal, bytes from offset 0 not yet punched
    bool rename_durable = false;
    bool close_in_flight = false;  // a step (a hole or the close) on the ring
    release_op op;
};

spool::spool(std::filesystem::path dir, unsigned shard, const options& opt, int dir_fd, int lock_fd)
    : _dir(std::move(dir)),
      _shard(shard),
      _opt(opt),
      _dir_fd(dir_fd),
      _lock_fd(lock_fd),
      _pending(std::make_unique<batch>()) {}

spool::~spool() {
    for (auto& [seq, s] : _segments) {
        if (s->map)
            ::munmap(s->map, s->capacity);
        if (s->fd >= 0)
            ::close(s->fd);
    }
    if (_journal_fd >= 0)
        ::close(_journal_fd);
    if (_compaction)
        ::close(_compaction->fd);  // journal.tmp is removed by the next recovery
    if (_release && _release->old_journal_fd >= 0 && !_release->close_in_flight)
        ::close(_release->old_journal_fd);
    for (const unlinked_file& u : _unlinked_files)
        ::close(u.fd);
    if (_unlinking.fd >= 0 && !_unlinked_in_flight)
        ::close(_unlinking.fd);
    ::close(_dir_fd);
    ::close(_lock_fd);
}

result<std::unique_ptr<spool>> spool::open(const std::filesystem::path& shard_dir, unsigned shard,
                                           const options& opt) {
    if (shard >= max_shards)
        core::invariant_broken("spool: shard number past queue id space");
    if (opt.segment_size == 0 || opt.max_message_size == 0)
        core::invariant_broken("spool: zero spool option");
    std::error_code ec;
    std::filesystem::create_directories(shard_dir, ec);
    if (ec)
        return errno_failure(ec.value());
    const int dir_fd = ::open(shard_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0)
        return errno_failure(errno);
    const int lock_fd = ::openat(dir_fd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (lock_fd < 0) {
        const int err = errno;
        ::close(dir_fd);
        return errno_failure(err);
    }
    if (::flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
        const int err = errno;
        ::close(lock_fd);
        ::close(dir_fd);
        return err == EWOULDBLOCK ? failure(errc::locked) : errno_failure(err);
    }
    return std::unique_ptr<spool>(new spool(shard_dir, shard, opt, dir_fd, lock_fd));
}

// ---------------------------------------------------------------- segments

// A streaming message's own file. No directory fsync here: the commit batch that makes its
// record valid fsyncs the directory first (the name only has to be durable before the 250), so
// many messages starting to stream at once cost one fsync, on the ring.
result<spool::segment*> spool::create_message_file(std::uint64_t capacity) {
    for (int tries = 0; tries < 64; ++tries) {
        if (_next_stream >= seq_limit)
            _next_stream = 1;
        const std::uint64_t n = _next_stream++;
        const std::string name = file_name(message_prefix, n);
        const int fd = ::openat(_dir_fd, name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
        if (fd < 0) {
            if (errno == EEXIST)
                continue;  // a file left from before a wrap of the numbers
            return errno_failure(errno);
        }
        void* map = ::mmap(nullptr, capacity, PROT_READ, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED) {
            const int err = errno;
            ::close(fd);
            ::unlinkat(_dir_fd, name.c_str(), 0);
            return errno_failure(err);
        }
        auto s = std::make_unique<segment>();
        s->seq = n;
        s->key = message_file_key | n;
        s->message_file = true;
        s->sealed = true;  // batches never place records here
        s->writing = true;
        s->fd = fd;
        s->map = static_cast<char*>(map);
        s->capacity = capacity;
        segment* raw = s.get();
        _segments.emplace(s->key, std::move(s));
        _dir_dirty = true;
        return raw;
    }
    return errno_failure(EEXIST);
}

result<spool::segment*> spool::create_segment(std::uint64_t capacity) {
    if (_next_seq >= seq_limit)
        return errc::ids_exhausted;
    // The sequence number is consumed only once its file exists: a failed creation is retried
    // with the same name, so the newest file always carries the highest number handed out.
    const std::uint64_t seq = _next_seq;
    const std::string name = segment_name(seq);
    const int fd = ::openat(_dir_fd, name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (fd < 0)
        return errno_failure(errno);
    void* map = ::mmap(nullptr, capacity, PROT_READ, MAP_SHARED, fd, 0);
    int err = map == MAP_FAILED ? errno : 0;
    // The directory entry must be durable before any record in the file is acknowledged, and
    // it persists the highest sequence number (queue ids never repeat).
    if (!err && ::fsync(_dir_fd) != 0)
        err = errno;
    if (err) {
        if (map != MAP_FAILED)
            ::munmap(map, capacity);
        ::close(fd);
        ::unlinkat(_dir_fd, name.c_str(), 0);
        return errno_failure(err);
    }
    ++_next_seq;
    auto s = std::make_unique<segment>();
    s->seq = seq;
    s->key = seq;
    s->fd = fd;
    s->map = static_cast<char*>(map);
    s->capacity = capacity;
    segment* raw = s.get();
    _segments.emplace(seq, std::move(s));
    return raw;
}

result<void> spool::rotate(std::uint64_t min_capacity) {
    auto s = create_segment(std::max(min_capacity, _opt.segment_size));
    if (!s)
        return failure(s.error());
    segment* old = _current;
    _current = *s;
    _id_block = _current->seq;
    _id_index = 0;
    if (old) {
        old->sealed = true;
        maybe_reclaim(old);
    }
    // A segment sealed by a failed batch while it was the newest had to stay; now it may go.
    if (auto it = _segments.find(_current->seq - 1); it != _segments.end()) {
        maybe_reclaim(it->second.get());
    }
    return {};
}

void spool::maybe_reclaim(segment* s) {
    if (s->live != 0 || s->inflight != 0 || s->stream_inflight != 0)
        return;
    if (s->message_file) {
        if (s->writing)
            return;
    } else if (!s->sealed || s->seq + 1 == _next_seq) {
        // The newest segment file stays on disk: its name is the persisted high-water mark of
        // the sequence (and so of queue ids) until a newer one exists.
        return;
    }
    if (s->map)
        ::munmap(s->map, s->capacity);
    // Unlinked while open, the file keeps its extents until its last close, which the ring
    // runs off the loop (prepare_release): unlinking a closed 64 MiB file frees them here, a
    // stall of tens of ms for every connection of the shard. A failed unlink leaves a file
    // whose messages are all journaled done (or that holds no valid record): recovery deletes
    // it.
    ::unlinkat(_dir_fd,
               file_name(s->message_file ? message_prefix : segment_prefix, s->seq).c_str(), 0);
    if (s->fd >= 0) {
        // Its size, for the holes: an lseek asks the inode, no I/O (unknown: it goes whole).
        // Rounded up to whole steps, so every hole is aligned and frees whole blocks, the
        // last one's too (a hole past the end is allowed: the size is kept).
        const off_t size = ::lseek(s->fd, 0, SEEK_END);
        _unlinked_files.push_back(unlinked_file{s->fd, whole_steps(size > 0 ? size : 0)});
    }
    s->fd = -1;
    ++_m.segments_reclaimed;
    _segments.erase(s->key);
}

// ---------------------------------------------------------------- reception

result<spool::writer_id> spool::begin(const mail::envelope& env) {
    _oncore.check();
    if (!_recovered)
        core::invariant_broken("spool: begin() before recover()");
    std::uint32_t slot;
    if (!_free_writers.empty()) {
        slot = _free_writers.back();
        _free_writers.pop_back();
    } else {
        if (_writers.size() > slot_mask)
            core::invariant_broken("spool: more than 2^20 open spool writers");
        slot = static_cast<std::uint32_t>(_writers.size());
        _writers.push_back(std::make_unique<writer>());
    }
    writer& w = *_writers[slot];
    w.open = true;
    w.generation = (w.generation + 1) & (UINT32_MAX >> slot_bits);
    w.envelope = format::encode_envelope(env);
    w.rcpt_count = static_cast<std::uint32_t>(env.rcpt_to.size());
    w.body.clear();
    w.body_length = 0;
    w.body_crc = 0;
    w.file = nullptr;
    w.body_start = 0;
    w.handed = 0;
    w.error.clear();
    if (_id_index == index_limit) {
        // The id block is used up: a new segment brings a new block.
        auto r = rotate(_opt.segment_size);
        if (!r) {
            w.open = false;
            _free_writers.push_back(slot);
            return failure(r.error());
        }
    }
    w.id = std::uint64_t(_shard) << 52 | _id_block << queue_id_index_bits | _id_index++;
    return (w.generation << slot_bits) | slot;
}

queue_id spool::writer_queue_id(writer_id id) const {
    _oncore.check();
    const std::uint32_t slot = id & slot_mask;
    if (slot >= _writers.size() || !_writers[slot]->open ||
        _writers[slot]->generation != id >> slot_bits) {
        core::invariant_broken("spool: writer_queue_id() of a writer that is not open");
    }
    return _writers[slot]->id;
}

result<void> spool::append(writer_id id, std::string_view bytes) {
    _oncore.check();
    const std::uint32_t slot = id & slot_mask;
    if (slot >= _writers.size() || !_writers[slot]->open ||
        _writers[slot]->generation != id >> slot_bits) {
        return errc::unknown_writer;
    }
    writer& w = *_writers[slot];
    if (bytes.size() > _opt.max_message_size - w.body_length)
        return errc::message_too_large;
    if (w.error)
        return failure(w.error);
    if (!w.file && w.body_length + bytes.size() > _opt.stream_threshold) {
        if (auto r = spill(w); !r) {
            w.error = r.error();
            w.body.clear();
            return failure(w.error);
        }
    }
    w.body_crc = crc32c(bytes, w.body_crc);
    w.body_length += bytes.size();
    while (!bytes.empty()) {
        if (w.body.empty() || w.body.back().used == w.body.back().size) {
            // In memory, geometric chunks: few iovecs for big bodies, little waste for small
            // ones, and never a reallocating copy. Streaming: fixed chunks, written as they fill.
            // (Sized to the bytes at hand, up to stream_chunk: a budget spent on empty chunk
            // space would hold sessions back for nothing.)
            std::size_t size = std::clamp<std::size_t>((bytes.size() + 4095) & ~std::size_t(4095),
                                                       16 << 10, stream_chunk);
            if (!w.file) {
                size = w.body.empty() ? first_chunk : std::min(max_chunk, w.body.back().size * 2);
            }
            w.body.emplace_back(size, &_unwritten);
        }
        chunk& c = w.body.back();
        const std::size_t n = std::min(bytes.size(), c.size - c.used);
        std::memcpy(c.data.get() + c.used, bytes.data(), n);
        c.used += n;
        bytes.remove_prefix(n);
    }
    return {};
}

void spool::abort(writer_id id) {
    _oncore.check();
    const std::uint32_t slot = id & slot_mask;
    if (slot >= _writers.size() || !_writers[slot]->open ||
        _writers[slot]->generation != id >> slot_bits) {
        return;
    }
    writer& w = *_writers[slot];
    w.open = false;
    w.body.clear();
    w.envelope.clear();
    _free_writers.push_back(slot);
    if (segment* f = std::exchange(w.file, nullptr)) {
        // Written parts are dropped with the file once no stream write names it.
        f->writing = false;
        maybe_reclaim(f);
    }
}

// The message gets a file of its own; its bytes so far are written from there on.
result<void> spool::spill(writer& w) {
    const std::uint64_t meta = format::header_size + w.envelope.size();
    const std::uint64_t start = (meta + added_headers_room + 4095) & ~std::uint64_t(4095);
    auto f = create_message_file(start + _opt.max_message_size + format::trailer_size);
    if (!f)
        return failure(f.error());
    w.file = *f;
    w.body_start = start;
    w.handed = 0;
    ++_m.streamed_messages;
    return {};
}

// Hands a streaming writer's buffered bytes to a stream batch.
void spool::flush_writer(writer& w, stream_batch& sb) {
    segment* f = w.file;
    std::uint64_t off = w.body_start + w.handed;
    for (chunk& c : w.body) {
        if (c.used == 0)
            continue;
        if (sb.cb.writes.empty() || sb.cb.writes.back().fd != f->fd ||
            sb.cb.writes.back().iov.size() == iov_max) {
            sb.cb.writes.push_back(write_op{f->fd, off, {}});
        }
        sb.cb.writes.back().iov.push_back(iovec{c.data.get(), c.used});
        off += c.used;
        w.handed += c.used;
        sb.chunks.push_back(std::move(c));
    }
    w.body.clear();
    if (std::find(sb.files.begin(), sb.files.end(), f) == sb.files.end()) {
        sb.files.push_back(f);
        ++f->stream_inflight;
    }
}

const commit_batch* spool::prepare_stream() {
    _oncore.check();
    if (_stream)
        return nullptr;
    const bool pressure = over_budget();
    if (pressure) {
        // The memory must be freed by writing, so messages still held in memory start to stream
        // (the bigger ones; all of them if none is big).
        bool any = false;
        for (int pass = 0; pass < 2 && !any; ++pass) {
            for (auto& wp : _writers) {
                writer& w = *wp;
                if (!w.open || w.file || w.body_length == 0 ||
                    (pass == 0 && w.body_length < pressure_spill)) {
                    continue;
                }
                if (auto r = spill(w); !r) {
                    // No file for it: it fails (451/452 at its end), its memory is freed.
                    w.error = r.error();
                    w.body.clear();
                    continue;
                }
                any = true;
            }
        }
    }
    auto sb = std::make_unique<stream_batch>();
    for (auto& wp : _writers) {
        writer& w = *wp;
        if (!w.open || !w.file || w.body.empty() || w.error)
            continue;
        if (sb->files.size() == max_stream_files)
            break;
        if (pressure || w.body_length - w.handed >= stream_flush)
            flush_writer(w, *sb);
    }
    if (sb->cb.writes.empty()) {
        for (segment* f : sb->files)
            --f->stream_inflight;
        return nullptr;
    }
    _stream = std::move(sb);
    return &_stream->cb;
}

void spool::complete_stream(int res) {
    _oncore.check();
    if (!_stream)
        core::invariant_broken("spool: complete_stream() without a stream batch in flight");
    std::unique_ptr<stream_batch> sb = std::move(_stream);
    if (res < 0)
        ++_m.stream_batches_failed;
    if (res < 0) {
        for (segment* f : sb->files) {
            if (!f->stream_error)
                f->stream_error = from_errno(-res);
        }
        for (auto& wp : _writers) {
            if (wp->open && wp->file && wp->file->stream_error) {
                wp->error = wp->file->stream_error;
                wp->body.clear();
            }
        }
    }
    for (segment* f : sb->files) {
        --f->stream_inflight;
        maybe_reclaim(f);
    }
    // The chunks are freed with sb.
}

result<queue_id> spool::finish(writer_id wid, std::string_view added_headers, std::uint64_t token) {
    _oncore.check();
    const std::uint32_t slot = wid & slot_mask;
    if (slot >= _writers.size() || !_writers[slot]->open ||
        _writers[slot]->generation != wid >> slot_bits) {
        return errc::unknown_writer;
    }
    writer& w = *_writers[slot];
    struct closer {
        spool* sp;
        writer_id id;
        ~closer() { sp->abort(id); }
    } close_writer{this, wid};

    if (added_headers.size() > _opt.max_message_size || added_headers.size() > UINT32_MAX ||
        w.envelope.size() > UINT32_MAX) {
        return errc::message_too_large;
    }
    const queue_id id = w.id;
    const std::uint64_t meta_length =
        format::header_size + w.envelope.size() + added_headers.size();
    if (w.error)
        return failure(w.error);
    if (w.file) {
        if (meta_length > w.body_start)
            return errc::message_too_large;  // added headers past their room (16 KiB)
    }

    record rec;
    rec.id = id;
    rec.token = token;
    rec.rcpt_count = w.rcpt_count;
    rec.h.id = id;
    rec.h.envelope_length = static_cast<std::uint32_t>(w.envelope.size());
    rec.h.added_headers_length = static_cast<std::uint32_t>(added_headers.size());
    rec.h.body_length = w.body_length;
    rec.h.body_crc = w.body_crc;
    if (w.file)
        rec.h.pad_length = static_cast<std::uint32_t>(w.body_start - meta_length);
    rec.h.record_length = rec.h.body_offset() + w.body_length + format::trailer_size;
    rec.meta_length = meta_length;
    rec.meta = chunk(rec.meta_length + format::trailer_size, &_unwritten);
    char* m = rec.meta.data.get();
    format::encode_header(m, rec.h);
    std::memcpy(m + format::header_size, w.envelope.data(), w.envelope.size());
    if (!added_headers.empty())  // a DSN has none, and memcpy from a null view is undefined
        std::memcpy(m + format::header_size + w.envelope.size(), added_headers.data(),
                    added_headers.size());
    format::put32(m + rec.meta_length, crc32c(m, rec.meta_length));
    format::put32(m + rec.meta_length + 4, format::trailer_magic);
    rec.body = std::move(w.body);
    if (w.file) {
        // The file goes with the record; it stays `writing` until the record commits or fails.
        rec.streamed = true;
        rec.seg = std::exchange(w.file, nullptr);
        rec.offset = 0;
        rec.handed = w.handed;
    }
    _pending->record_bytes += rec.h.record_length;
    _pending->records.push_back(std::move(rec));
    return id;
}

// ---------------------------------------------------------------- journal

void spool::journal_entry(std::uint8_t type, queue_id id, std::uint64_t a, std::uint64_t b) {
    char e[format::journal_entry_size];
    format::encode_journal(e, {format::journal_type(type), id, a, b});
    _pending->journal.insert(_pending->journal.end(), e, e + sizeof e);
}

void spool::record_rcpt(queue_id id, std::uint32_t rcpt_index, outcome o) {
    _oncore.check();
    auto it = _live.find(id);
    if (it == _live.end() || rcpt_index >= it->second->rcpt_count)
        return;
    journal_entry(std::uint8_t(format::journal_type::rcpt), id,
                  std::uint64_t(rcpt_index) << 8 | std::uint8_t(o), 0);
}

void spool::record_attempt(queue_id id, std::uint32_t attempts, std::int64_t next_attempt_unix) {
    _oncore.check();
    if (!_live.count(id))
        return;
    journal_entry(std::uint8_t(format::journal_type::attempt), id, attempts,
                  static_cast<std::uint64_t>(next_attempt_unix));
}

void spool::record_done(queue_id id) {
    _oncore.check();
    if (!_live.count(id))
        return;
    journal_entry(std::uint8_t(format::journal_type::done), id, 0, 0);
    _pending->dones.push_back(id);
}

// ---------------------------------------------------------------- group commit

bool spool::has_pending() const {
    _oncore.check();
    return !_pending->records.empty() || !_pending->journal.empty() ||
           (_compaction && _compaction->walked && !_compaction->in_batch) ||
           release_awaits_dir_sync();
}

// The journal a compaction replaced waits for a directory fsync (its rename durable) before it
// is truncated; an idle shard makes a batch of that fsync alone.
bool spool::release_awaits_dir_sync() const {
    return _release && _release->old_journal_fd >= 0 && !_release->rename_durable && _dir_dirty;
}

std::optional<spool::clock::time_point> spool::journal_due() const {
    _oncore.check();
    if (_pending->journal.empty() || !_journal_since)
        return std::nullopt;
    return *_journal_since + _opt.journal_delay;
}

bool spool::holds_journal_only() const {
    _oncore.check();
    return _journal_since && !_pending->journal.empty() && _pending->records.empty() &&
           !(_compaction && _compaction->walked && !_compaction->in_batch) &&
           !release_awaits_dir_sync();
}

const commit_batch* spool::prepare_batch(std::optional<clock::time_point> now) {
    _oncore.check();
    if (now && !_pending->journal.empty() && !_journal_since)
        _journal_since = *now;
    if (_inflight)
        return nullptr;
    // Between batches: a slice of the compaction's walk (it runs while idle too), or of the
    // release of what the last one left.
    release_step();
    maybe_compact();
    if (!has_pending())
        return nullptr;
    // Journal entries wait to be carried by a batch until due: a batch that carries some pays a
    // second fdatasync (of the journal), and under load most batches would. A compaction's swap
    // batch carries them at once (its tail must end with everything committed before).
    const bool swap_ready = _compaction && _compaction->walked && !_compaction->in_batch;
    const bool hold_journal = now && !_pending->journal.empty() && !swap_ready &&
                              *now - *_journal_since < _opt.journal_delay &&
                              _pending->journal.size() < _opt.journal_batch_bytes;
    if (hold_journal && _pending->records.empty() && !release_awaits_dir_sync())
        return nullptr;
    _inflight = std::move(_pending);
    _pending = std::make_unique<batch>();
    batch& b = *_inflight;
    if (hold_journal) {
        _pending->journal = std::exchange(b.journal, {});
        _pending->dones = std::exchange(b.dones, {});
    } else {
        _journal_since.reset();
    }
    // A streamed record whose file still has stream writes in flight waits for the next batch:
    // its fdatasync must come after them. So do streamed records past max_streamed_per_batch
    // (each is 3 writes and a sync of its own: the chain must fit the ring).
    const auto streamed_count = std::count_if(b.records.begin(), b.records.end(),
                                              [](const record& r) { return r.streamed; });
    if (std::any_of(b.records.begin(), b.records.end(),
                    [](const record& r) { return r.streamed && r.seg->stream_inflight != 0; }) ||
        streamed_count > std::ptrdiff_t(max_streamed_per_batch)) {
        std::vector<record> ready;
        std::size_t taken = 0;
        for (record& r : b.records) {
            if (r.streamed && (r.seg->stream_inflight != 0 || taken == max_streamed_per_batch)) {
                b.record_bytes -= r.h.record_length;
                _pending->record_bytes += r.h.record_length;
                _pending->records.push_back(std::move(r));
            } else {
                taken += r.streamed;
                ready.push_back(std::move(r));
            }
        }
        b.records = std::move(ready);
        if (b.records.empty() && b.journal.empty() && !(_compaction && _compaction->walked) &&
            !release_awaits_dir_sync()) {
            _inflight.reset();  // empty: every record waits in _pending
            return nullptr;
        }
    }

    std::uint64_t op_end = 0;  // file offset just past the last write_op's bytes
    auto add = [&](int fd, std::uint64_t off, const void* p, std::size_t n) {
        if (n == 0)
            return;
        if (b.cb.writes.empty() || b.cb.writes.back().fd != fd || op_end != off ||
            b.cb.writes.back().iov.size() == iov_max) {
            b.cb.writes.push_back(write_op{fd, off, {}});
        }
        b.cb.writes.back().iov.push_back(iovec{const_cast<void*>(p), n});
        op_end = off + n;
    };

    std::error_code place_error;
    bool streamed = false;
    for (record& r : b.records) {
        const std::uint64_t len = r.h.record_length;
        if (r.streamed) {
            segment* f = r.seg;
            if (f->stream_error) {
                r.error = f->stream_error;
                r.seg = nullptr;
                f->writing = false;
                maybe_reclaim(f);
                continue;
            }
            // Its own file: the header and added headers in front of the body, the rest of the
            // body where the stream writes stopped, the trailer after it.
            streamed = true;
            ++f->inflight;
            b.touched.push_back(f);
            add(f->fd, 0, r.meta.data.get(), r.meta_length);
            std::uint64_t off = r.h.body_offset() + r.handed;
            for (const chunk& c : r.body) {
                add(f->fd, off, c.data.get(), c.used);
                off += c.used;
            }
            add(f->fd, r.h.body_offset() + r.h.body_length, r.meta.data.get() + r.meta_length,
                format::trailer_size);
            continue;
        }
        if (!place_error && (!_current || _current->append_offset + len > _current->capacity)) {
            // A record that does not fit starts a new segment; a huge one gets its own.
            auto rr = rotate(len);
            if (!rr)
                place_error = rr.error();
        }
        if (place_error) {
            // Later records would need the segment that could not be created either; fail them
            // now rather than retrying the syscall per record.
            r.error = place_error;
            continue;
        }
        segment* s = _current;
        r.seg = s;
        r.offset = s->append_offset;
        s->append_offset += len;
        ++s->inflight;
        if (std::find(b.touched.begin(), b.touched.end(), s) == b.touched.end()) {
            b.touched.push_back(s);
        }
        std::uint64_t off = r.offset;
        add(s->fd, off, r.meta.data.get(), r.meta_length);
        off += r.meta_length;
        for (const chunk& c : r.body) {
            add(s->fd, off, c.data.get(), c.used);
            off += c.used;
        }
        add(s->fd, off, r.meta.data.get() + r.meta_length, format::trailer_size);
    }
    for (segment* s : b.touched)
        b.cb.sync_fds.push_back(s->fd);
    if (!b.journal.empty()) {
        add(_journal_fd, _journal_offset, b.journal.data(), b.journal.size());
        b.cb.sync_fds.push_back(_journal_fd);
    }
    if (_compaction && _compaction->walked) {
        // The swap batch: journal.tmp gets the image, the tail, this batch's entries and the
        // floor (the highest sequence now), and is synced with the rest.
        compaction& c = *_compaction;
        c.in_batch = true;
        b.compaction_swap = true;
        format::encode_journal(c.floor, {format::journal_type::seq_floor, 0, _next_seq - 1, 0});
        std::uint64_t off = 0;
        for (const entry_buffer* eb : {&c.image, &c.tail}) {
            for (std::size_t i = 0; i < eb->blocks.size(); ++i) {
                add(c.fd, off, eb->blocks[i].get(), eb->piece_size(i));
                off += eb->piece_size(i);
            }
        }
        add(c.fd, off, b.journal.data(), b.journal.size());
        off += b.journal.size();
        add(c.fd, off, c.floor, sizeof c.floor);
        off += sizeof c.floor;
        c.size = off;
        b.cb.sync_fds.push_back(c.fd);
    }
    if (_dir_dirty &&
        (streamed || b.compaction_swap || !b.journal.empty() || release_awaits_dir_sync())) {
        // New message files' names must be durable before their 250s, a compaction's rename
        // before the new journal is relied on.
        b.cb.fsync_fds.push_back(_dir_fd);
        b.dir_synced = true;
        b.releases_journal = _release && _release->old_journal_fd >= 0;
        _dir_dirty = false;
    }
    return &b.cb;
}

std::vector<spool::committed> spool::complete_batch(int res) {
    _oncore.check();
    if (!_inflight)
        core::invariant_broken("spool: complete_batch() without a batch in flight");
    std::unique_ptr<batch> b = std::move(_inflight);
    std::vector<committed> out;
    out.reserve(b->records.size());

    if (res == 0) {
        ++_m.batches_committed;
        if (b->dir_synced && _release && _release->old_journal_fd >= 0 && b->releases_journal)
            _release->rename_durable = true;
        for (record& r : b->records) {
            if (r.error) {
                out.push_back({r.token, failure(r.error)});
                continue;
            }
            --r.seg->inflight;
            ++r.seg->live;
            r.seg->writing = false;
            auto loc = std::make_unique<location>();
            loc->seg = r.seg;
            loc->offset = r.offset;
            loc->h = r.h;
            loc->rcpt_count = r.rcpt_count;
            loc->rcpt_state.assign(r.rcpt_count, 0);
            _live.emplace(r.id, std::move(loc));
            out.push_back({r.token, r.id});
        }
        _journal_offset += b->journal.size();
        for (std::size_t off = 0; off + format::journal_entry_size <= b->journal.size();
             off += format::journal_entry_size) {
            auto e = format::decode_journal({b->journal.data() + off, format::journal_entry_size});
            if (!e)
                core::invariant_broken("spool: spool's own journal entry does not decode");
            auto it = _live.find(e->id);
            if (it == _live.end())
                continue;
            location& loc = *it->second;
            if (e->type == format::journal_type::rcpt) {
                const std::uint64_t idx = e->a >> 8;
                if (idx < loc.rcpt_state.size())
                    loc.rcpt_state[idx] = std::uint8_t(e->a & 0xFF);
            } else if (e->type == format::journal_type::attempt) {
                loc.attempts = static_cast<std::uint32_t>(e->a);
                loc.next_attempt = static_cast<std::int64_t>(e->b);
            }
        }
        for (queue_id id : b->dones) {
            auto it = _live.find(id);
            if (it == _live.end())
                continue;
            segment* s = it->second->seg;
            _live.erase(it);
            --s->live;
            s->dead.push_back(id);
            maybe_reclaim(s);
        }
        if (_compaction) {
            if (b->compaction_swap) {
                swap_journal();
            } else {
                _compaction->tail.append(b->journal.data(), b->journal.size());
            }
        }
        return out;
    }

    ++_m.batches_failed;
    if (b->dir_synced)
        _dir_dirty = true;
    if (b->compaction_swap)
        end_compaction(true);  // the old journal stays; a new walk starts later
    const failure err = errno_failure(-res);
    // The journal entries are facts that still have to reach the disk: they go first in the next
    // batch, rewritten at the same offset, so whatever this batch tore is overwritten by the
    // same bytes and recovery never stops in front of later entries. (A new journal file per
    // failure would work too, but needs a directory fsync and a file list at recovery.)
    std::vector<char> journal = std::move(b->journal);
    journal.insert(journal.end(), _pending->journal.begin(), _pending->journal.end());
    _pending->journal = std::move(journal);
    b->dones.insert(b->dones.end(), _pending->dones.begin(), _pending->dones.end());
    _pending->dones = std::move(b->dones);

    for (record& r : b->records) {
        out.push_back({r.token, r.error ? failure(r.error) : err});
        if (!r.seg)
            continue;
        --r.seg->inflight;
        r.seg->writing = false;
        // The record may have reached the disk intact although the batch failed (the client
        // was told 4xx): a done entry keeps recovery from delivering it.
        journal_entry(std::uint8_t(format::journal_type::done), r.id, 0, 0);
        r.seg->dead.push_back(r.id);
    }
    // Nothing may follow a possibly torn region: the touched segments take no more records.
    for (segment* s : b->touched) {
        s->sealed = true;
        if (s == _current)
            _current = nullptr;
    }
    for (segment* s : b->touched)
        maybe_reclaim(s);
    return out;
}

// ---------------------------------------------------------------- reading

result<stored_message> spool::decode_at(const location& loc) const {
    const char* p = loc.seg->map + loc.offset + format::header_size;
    auto env = format::decode_envelope({p, loc.h.envelope_length});
    if (!env)
        return failure(env.error());
    p += loc.h.envelope_length;
    stored_message m;
    m.id = loc.h.id;
    m.env = std::move(*env);
    m.added_headers = {p, loc.h.added_headers_length};
    p += std::uint64_t(loc.h.added_headers_length) + loc.h.pad_length;
    m.body = {p, loc.h.body_length};
    return m;
}

result<stored_message> spool::read(queue_id id) const {
    _oncore.check();
    auto it = _live.find(id);
    if (it == _live.end())
        return errc::unknown_queue_id;
    return decode_at(*it->second);
}

spool_metrics spool::metrics() const {
    _oncore.check();
    spool_metrics m = _m;
    m.pending_bytes = _pending->record_bytes + _pending->journal.size();
    if (_inflight)
        m.inflight_bytes = _inflight->record_bytes + _inflight->journal.size();
    m.segments_live = _segments.size();
    m.messages_live = _live.size();
    m.journal_bytes = _journal_offset;
    m.unwritten_bytes = _unwritten;
    return m;
}

// ---------------------------------------------------------------- recovery

namespace {

struct scanned {
    recovered_message m;
    std::uint64_t offset;
    format::record_header h;
    std::uint64_t key;  // of its segment or message file
    bool done = false;
};

result<std::vector<char>> read_file(int dir_fd, const char* name) {
    const int fd = ::openat(dir_fd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return std::vector<char>{};
        return errno_failure(errno);
    }
    std::vector<char> data;
    struct stat st;
    if (::fstat(fd, &st) != 0) {
        const int err = errno;
        ::close(fd);
        return errno_failure(err);
    }
    data.resize(std::size_t(st.st_size));
    std::size_t got = 0;
    while (got < data.size()) {
        const ssize_t n = ::pread(fd, data.data() + got, data.size() - got, off_t(got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += std::size_t(n);
    }
    ::close(fd);
    data.resize(got);
    return data;
}

}  // namespace

result<std::vector<recovered_message>> spool::recover() {
    _oncore.check();
    if (_recovered)
        core::invariant_broken("spool: recover() called twice");

    ::unlinkat(_dir_fd, journal_tmp_name, 0);
    // Segment sequence numbers, and message files as message_file_key | number.
    std::vector<std::uint64_t> seqs;
    {
        DIR* d = ::opendir(_dir.c_str());
        if (!d)
            return errno_failure(errno);
        while (dirent* e = ::readdir(d)) {
            std::uint64_t seq;
            if (parse_segment_name(e->d_name, seq)) {
                seqs.push_back(seq);
            } else if (parse_file_name(e->d_name, message_prefix, seq)) {
                seqs.push_back(message_file_key | seq);
                _next_stream = std::max(_next_stream, seq + 1);
            }
        }
        ::closedir(d);
    }
    std::sort(seqs.begin(), seqs.end());
    auto name_of = [](std::uint64_t key) {
        return key & message_file_key ? file_name(message_prefix, key & ~message_file_key)
                                      : segment_name(key);
    };

    // Segments and message files: every record whose checksums verify, up to the first that
    // does not (a message file whose upload did not commit holds none).
    std::vector<scanned> found;
    std::unordered_map<queue_id, std::size_t> by_id;
    for (std::uint64_t key : seqs) {
        const bool message_file = (key & message_file_key) != 0;
        const std::uint64_t seq = key & ~message_file_key;
        if (!message_file)
            _next_seq = std::max(_next_seq, seq + 1);
        const int fd = ::openat(_dir_fd, name_of(key).c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return errno_failure(errno);
        struct stat st;
        if (::fstat(fd, &st) != 0) {
            const int err = errno;
            ::close(fd);
            return errno_failure(err);
        }
        auto s = std::make_unique<segment>();
        s->seq = seq;
        s->key = key;
        s->message_file = message_file;
        s->fd = fd;
        s->sealed = true;
        s->capacity = std::uint64_t(st.st_size);
        if (s->capacity > 0) {
            void* map = ::mmap(nullptr, s->capacity, PROT_READ, MAP_SHARED, fd, 0);
            if (map == MAP_FAILED) {
                const int err = errno;
                ::close(fd);
                return errno_failure(err);
            }
            s->map = static_cast<char*>(map);
        }
        std::uint64_t off = 0;
        while (off < s->capacity) {
            auto h = format::check_record({s->map + off, s->capacity - off});
            if (!h || by_id.count(h->id))
                break;
            auto env =
                format::decode_envelope({s->map + off + format::header_size, h->envelope_length});
            if (!env)
                break;
            scanned sc;
            sc.offset = off;
            sc.h = *h;
            sc.key = key;
            sc.m.msg.id = h->id;
            sc.m.msg.env = std::move(*env);
            const std::size_t n = sc.m.msg.env.rcpt_to.size();
            sc.m.rcpt_done.assign(n, false);
            sc.m.rcpt_outcome.assign(n, outcome::delivered);
            sc.m.rcpt_delay_noticed.assign(n, false);
            by_id.emplace(h->id, found.size());
            found.push_back(std::move(sc));
            off += h->record_length;
        }
        _segments.emplace(key, std::move(s));
    }

    // Journal: apply entries up to the first torn one.
    auto jr = read_file(_dir_fd, journal_name);
    if (!jr)
        return failure(jr.error());
    const std::vector<char>& jbytes = *jr;
    for (std::size_t off = 0; off + format::journal_entry_size <= jbytes.size();
         off += format::journal_entry_size) {
        auto e = format::decode_journal({jbytes.data() + off, format::journal_entry_size});
        if (!e)
            break;
        if (e->type == format::journal_type::seq_floor) {
            if (e->a < seq_limit)
                _next_seq = std::max(_next_seq, e->a + 1);
            continue;
        }
        auto it = by_id.find(e->id);
        if (it == by_id.end())
            continue;
        scanned& sc = found[it->second];
        switch (e->type) {
            case format::journal_type::rcpt: {
                const std::uint64_t idx = e->a >> 8;
                const auto o = std::uint8_t(e->a & 0xFF);
                if (idx < sc.m.rcpt_done.size() && o >= 1 && o <= 3) {
                    sc.m.rcpt_done[idx] = true;
                    sc.m.rcpt_outcome[idx] = outcome(o);
                    sc.m.rcpt_delay_noticed[idx] = false;
                } else if (idx < sc.m.rcpt_done.size() &&
                           o == std::uint8_t(outcome::delay_noticed) && !sc.m.rcpt_done[idx]) {
                    sc.m.rcpt_delay_noticed[idx] = true;
                }
                break;
            }
            case format::journal_type::attempt:
                sc.m.attempts = static_cast<std::uint32_t>(e->a);
                sc.m.next_attempt = static_cast<std::int64_t>(e->b);
                break;
            case format::journal_type::done:
                sc.done = true;
                break;
            case format::journal_type::seq_floor:
                break;
        }
    }

    // In-memory state, then the journal compacted from it (done entries for every message still
    // in a segment file, so a crash before the unlinks below cannot resurrect them).
    std::vector<recovered_message> out;
    for (scanned& sc : found) {
        segment* s = _segments.at(sc.key).get();
        if (sc.done) {
            s->dead.push_back(sc.m.msg.id);
            continue;
        }
        ++s->live;
        auto loc = std::make_unique<location>();
        loc->seg = s;
        loc->offset = sc.offset;
        loc->h = sc.h;
        loc->rcpt_count = static_cast<std::uint32_t>(sc.m.rcpt_done.size());
        loc->rcpt_state.assign(loc->rcpt_count, 0);
        for (std::size_t i = 0; i < sc.m.rcpt_done.size(); ++i) {
            if (sc.m.rcpt_done[i])
                loc->rcpt_state[i] = std::uint8_t(sc.m.rcpt_outcome[i]);
            else if (sc.m.rcpt_delay_noticed[i])
                loc->rcpt_state[i] = std::uint8_t(outcome::delay_noticed);
        }
        loc->attempts = sc.m.attempts;
        loc->next_attempt = sc.m.next_attempt;
        auto m = decode_at(*loc);
        if (!m)
            return failure(m.error());
        sc.m.msg = std::move(*m);
        _live.emplace(sc.m.msg.id, std::move(loc));
        out.push_back(std::move(sc.m));
    }
    if (auto c = compact_journal(); !c)
        return failure(c.error());

    // Segments without live messages are deleted.
    for (std::uint64_t key : seqs) {
        segment* s = _segments.at(key).get();
        if (s->live != 0)
            continue;
        if (s->map)
            ::munmap(s->map, s->capacity);
        ::close(s->fd);
        if (::unlinkat(_dir_fd, name_of(key).c_str(), 0) != 0)
            return errno_failure(errno);
        _segments.erase(key);
    }
    if (::fsync(_dir_fd) != 0)
        return errno_failure(errno);

    // A fresh segment for new records (recovered ones are sealed: they may end in a torn tail).
    auto r = rotate(_opt.segment_size);
    if (!r)
        return failure(r.error());
    _compact_at =
        std::max(_opt.journal_compact_bytes, _opt.journal_compact_ratio * _journal_offset);
    _recovered = true;
    return out;
}

// ---------------------------------------------------------------- journal compaction

std::uint64_t spool::compacted_journal_entries() const {
    std::uint64_t n = 1;  // the floor
    for (const auto& [id, loc] : _live) {
        for (std::uint8_t st : loc->rcpt_state)
            n += st != 0;
        n += loc->attempts != 0 || loc->next_attempt != 0;
    }
    for (const auto& [seq, s] : _segments)
        n += s->dead.size();
    return n;
}

// The one compaction routine (recovery and runtime): only between batches, when the journal file
// holds exactly the committed state that _live and the segments' dead lists mirror.
result<void> spool::compact_journal() {
    if (_inflight)
        core::invariant_broken("spool: journal compaction with a batch in flight");
    std::vector<char> compact;
    compact.reserve(compacted_journal_entries() * format::journal_entry_size);
    auto put = [&](format::journal_type t, queue_id id, std::uint64_t a, std::uint64_t b) {
        char e[format::journal_entry_size];
        format::encode_journal(e, {t, id, a, b});
        compact.insert(compact.end(), e, e + sizeof e);
    };
    put(format::journal_type::seq_floor, 0, _next_seq - 1, 0);
    for (const auto& [seq, s] : _segments) {
        for (queue_id id : s->dead)
            put(format::journal_type::done, id, 0, 0);
    }
    for (const auto& [id, loc] : _live) {
        for (std::size_t i = 0; i < loc->rcpt_state.size(); ++i) {
            if (loc->rcpt_state[i] != 0)
                put(format::journal_type::rcpt, id, std::uint64_t(i) << 8 | loc->rcpt_state[i], 0);
        }
        if (loc->attempts != 0 || loc->next_attempt != 0) {
            put(format::journal_type::attempt, id, loc->attempts,
                static_cast<std::uint64_t>(loc->next_attempt));
        }
    }

    const int fd =
        ::openat(_dir_fd, journal_tmp_name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return errno_failure(errno);
    int err = write_all(fd, compact.data(), compact.size(), 0);
    if (!err && ::fdatasync(fd) != 0)
        err = errno;
    if (!err && ::renameat(_dir_fd, journal_tmp_name, _dir_fd, journal_name) != 0)
        err = errno;
    if (err) {
        // The old journal is untouched and stays in use.
        ::close(fd);
        ::unlinkat(_dir_fd, journal_tmp_name, 0);
        return errno_failure(err);
    }
    // The name now points at the new file whatever the directory fsync says, so it is the one to
    // append to. Should the rename not be durable, the next segment creation's directory fsync
    // makes it so; until then a crash recovers from the old, complete journal.
    const int sync_err = ::fsync(_dir_fd) != 0 ? errno : 0;
    if (_journal_fd >= 0)
        ::close(_journal_fd);
    _journal_fd = fd;
    _journal_offset = compact.size();
    if (sync_err)
        return errno_failure(sync_err);
    return {};
}

// Runtime compaction is incremental, so that no loop iteration stalls (1,000,000 live messages
// take seconds to serialize and sync). It walks the committed state in slices, one per
// prepare_batch(), into an image in memory, while every batch committed meanwhile also goes to a
// tail: replaying image then tail gives the current state whatever changed during the walk
// (outcomes are final, the last attempt entry wins, a done entry comes after the message's
// other entries, and duplicates are harmless). The swap batch writes its journal entries to
// both journals and image + tail + its entries + the floor to journal.tmp, with an fdatasync of
// each; once it completed, journal.tmp is renamed over journal (the directory is fsynced by the
// next batch): a crash before leaves the old journal, complete, a crash after the new one.

namespace {
void put_entry(entry_buffer& out, format::journal_type t, queue_id id, std::uint64_t a,
               std::uint64_t b) {
    char e[format::journal_entry_size];
    format::encode_journal(e, {t, id, a, b});
    out.append(e, sizeof e);
}
}  // namespace

void spool::maybe_compact() {
    if (_compaction) {
        if (!_compaction->walked)
            compaction_step();
        return;
    }
    if (_journal_offset < _compact_at)
        return;
    if (_release && _release->old_journal_fd >= 0)
        return;  // the last one's journal is not released yet
    const int fd =
        ::openat(_dir_fd, journal_tmp_name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0) {
        ++_m.journal_compaction_failures;
        _compact_at = _journal_offset + std::max(_opt.journal_compact_bytes, std::uint64_t{1});
        return;
    }
    _compaction = std::make_unique<compaction>();
    _compaction->fd = fd;
    _compaction->segs.reserve(_segments.size());
    for (const auto& [key, sg] : _segments)
        _compaction->segs.push_back(key);
    _compaction->buckets = _live.bucket_count();
    compaction_step();
}

void spool::compaction_step() {
    compaction& c = *_compaction;
    std::size_t budget = std::max<std::size_t>(_opt.journal_compact_slice, 1);
    while (budget > 0 && c.seg < c.segs.size()) {
        auto it = _segments.find(c.segs[c.seg]);
        if (it == _segments.end()) {  // reclaimed meanwhile: its done entries are not needed
            ++c.seg;
            c.dead = 0;
            continue;
        }
        const std::vector<queue_id>& dead = it->second->dead;
        for (; budget > 0 && c.dead < dead.size(); ++c.dead, --budget)
            put_entry(c.image, format::journal_type::done, dead[c.dead], 0, 0);
        if (c.dead >= dead.size()) {
            ++c.seg;
            c.dead = 0;
        }
    }
    if (_live.bucket_count() != c.buckets) {
        // Rehashed: walk every bucket again (what was walked already is duplicated, harmless).
        c.buckets = _live.bucket_count();
        c.bucket = 0;
    }
    for (; budget > 0 && c.bucket < c.buckets; ++c.bucket, --budget) {
        for (auto it = _live.begin(c.bucket); it != _live.end(c.bucket); ++it) {
            const location& loc = *it->second;
            for (std::size_t i = 0; i < loc.rcpt_state.size(); ++i) {
                if (loc.rcpt_state[i] != 0) {
                    put_entry(c.image, format::journal_type::rcpt, it->first,
                              std::uint64_t(i) << 8 | loc.rcpt_state[i], 0);
                }
            }
            if (loc.attempts != 0 || loc.next_attempt != 0) {
                put_entry(c.image, format::journal_type::attempt, it->first, loc.attempts,
                          static_cast<std::uint64_t>(loc.next_attempt));
            }
        }
    }
    if (c.seg < c.segs.size() || c.bucket < c.buckets)
        return;
    c.walked = true;
    const std::uint64_t compacted = c.image.size + c.tail.size;
    const std::uint64_t floor = std::max(_opt.journal_compact_bytes, std::uint64_t{1});
    if (_journal_offset < _opt.journal_compact_ratio * compacted) {
        // Mostly live state: not worth it; look again once the journal grew past the ratio.
        end_compaction(false);
        _compact_at = std::max(floor, _opt.journal_compact_ratio * compacted);
    }
}

void spool::end_compaction(bool failed) {
    ::close(_compaction->fd);
    ::unlinkat(_dir_fd, journal_tmp_name, 0);
    retire_blocks(*_compaction);
    _compaction.reset();
    if (failed) {
        ++_m.journal_compaction_failures;
        _compact_at = _journal_offset + std::max(_opt.journal_compact_bytes, std::uint64_t{1});
    }
}

// The swap batch completed: journal.tmp holds everything the journal holds.
void spool::swap_journal() {
    compaction& c = *_compaction;
    if (::renameat(_dir_fd, journal_tmp_name, _dir_fd, journal_name) != 0) {
        end_compaction(true);
        return;
    }
    // The old journal is unlinked now but still open: closing it here would free all its extents
    // in this loop iteration. Once the rename is durable, prepare_release() hands its close to
    // the ring.
    if (!_release)
        _release = std::make_unique<release>();
    _release->old_journal_fd = _journal_fd;
    _release->old_journal_size = _journal_offset;
    _release->left = whole_steps(_journal_offset);
    _release->rename_durable = false;
    _journal_fd = c.fd;
    _journal_offset = c.size;
    retire_blocks(c);
    _compaction.reset();
    _dir_dirty = true;  // the rename is made durable by the next batch's directory fsync
    ++_m.journal_compactions;
    _compact_at = std::max(std::max(_opt.journal_compact_bytes, std::uint64_t{1}),
                           _opt.journal_compact_ratio * _journal_offset);
}

void spool::retire_blocks(compaction& c) {
    if (!_release)
        _release = std::make_unique<release>();
    for (entry_buffer* eb : {&c.image, &c.tail}) {
        for (auto& blk : eb->blocks)
            _release->blocks.push_back(std::move(blk));
        eb->blocks.clear();
    }
}

void spool::release_step() {
    if (!_release)
        return;
    release& r = *_release;
    for (std::size_t n = 0; n < release_blocks_per_step && !r.blocks.empty(); ++n)
        r.blocks.pop_back();
    if (r.blocks.empty() && r.old_journal_fd < 0)
        _release.reset();
}

const release_op* spool::prepare_release() {
    _oncore.check();
    if (_unlinked_in_flight || (_release && _release->close_in_flight))
        return nullptr;
    if (!_release || _release->old_journal_fd < 0 || !_release->rename_durable) {
        if (_unlinking.fd < 0) {
            if (_unlinked_files.empty())
                return nullptr;
            _unlinking = _unlinked_files.back();
            _unlinked_files.pop_back();
        }
        _unlinked_op = next_release_step(_unlinking.fd, _unlinking.left);
        _unlinked_in_flight = true;
        return &_unlinked_op;
    }
    release& r = *_release;
    r.close_in_flight = true;
    r.op = next_release_step(r.old_journal_fd, r.left);
    return &r.op;
}

std::uint64_t spool::whole_steps(std::uint64_t size) const {
    const std::uint64_t step = _opt.release_punch_bytes;
    return step > 0 ? (size + step - 1) / step * step : 0;
}

release_op spool::next_release_step(int fd, std::uint64_t left) const {
    const std::uint64_t step = _opt.release_punch_bytes;
    if (step == 0 || left == 0)
        return release_op{fd};
    const std::uint64_t n = std::min(left, step);
    return release_op{fd, left - n, n};
}

void spool::complete_release(int res) {
    _oncore.check();
    if (_unlinked_in_flight) {
        _unlinked_in_flight = false;
        if (_unlinked_op.punch_length == 0) {
            _unlinking = unlinked_file{};  // a failed close(2) still releases the descriptor
        } else {
            // A failed punch (EOPNOTSUPP: no holes on this filesystem) leaves the rest to the
            // close.
            _unlinking.left = res < 0 ? 0 : _unlinked_op.punch_offset;
        }
        return;
    }
    if (!_release || !_release->close_in_flight)
        core::invariant_broken("spool: complete_release() without a close in flight");
    if (_release->op.punch_length > 0) {
        _release->left = res < 0 ? 0 : _release->op.punch_offset;  // as for a reclaimed file
        _release->close_in_flight = false;
        return;
    }
    // A failed close(2) still releases the descriptor: nothing to retry.
    _release->old_journal_fd = -1;
    _release->close_in_flight = false;
    if (_release->blocks.empty())
        _release.reset();
}

bool spool::release_in_flight() const {
    return _unlinked_in_flight || (_release && _release->close_in_flight);
}

// ---------------------------------------------------------------- synchronous execution

int execute_release_sync(const release_op& op) {
    if (op.punch_length > 0) {
        return ::fallocate(op.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                           static_cast<off_t>(op.punch_offset),
                           static_cast<off_t>(op.punch_length)) == 0
                   ? 0
                   : -errno;
    }
    return ::close(op.fd) == 0 ? 0 : -errno;
}

int execute_batch_sync(const commit_batch& b) {
    for (const write_op& op : b.writes) {
        std::vector<iovec> iov = op.iov;
        std::size_t first = 0;
        std::uint64_t off = op.offset;
        while (first < iov.size()) {
            const int cnt = int(std::min(iov.size() - first, iov_max));
            const ssize_t n = ::pwritev(op.fd, iov.data() + first, cnt, off_t(off));
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                return -errno;
            }
            if (n == 0)
                return -EIO;
            off += std::uint64_t(n);
            std::size_t left = std::size_t(n);
            while (first < iov.size() && left >= iov[first].iov_len) {
                left -= iov[first].iov_len;
                ++first;
            }
            if (left > 0) {
                iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
                iov[first].iov_len -= left;
            }
        }
    }
    for (int fd : b.sync_fds) {
        if (::fdatasync(fd) != 0)
            return -errno;
    }
    for (int fd : b.fsync_fds) {
        if (::fsync(fd) != 0)
            return -errno;
    }
    return 0;
}

}  // namespace ringmail::spool
