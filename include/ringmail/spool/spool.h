// The durable spool of one shard: append-only segment files plus a journal, in
// `<spool_dir>/shard-<N>/`.
//
// Owned by one shard (checked with core::oncore). The spool never writes or syncs on the
// per-message path: finished messages and journal entries join a pending commit_batch that the
// reactor submits to io_uring (linked writes, then fdatasync) and reports with complete_batch().
// At most one batch is in flight; everything finished meanwhile waits for the next (group
// commit). Journal entries (delivery outcomes) wait up to options::journal_delay for a batch:
// nothing is acknowledged on their strength, and a batch carrying them costs a second
// fdatasync. Plain synchronous syscalls are used only off the per-message path: open/recover,
// creating a segment (open + mmap + fsync of the directory, once per segment_size bytes),
// unlinking reclaimed segments (while still open: their extents are freed on the ring through
// prepare_release, in holes of options::release_punch_bytes and then the last close), and
// journal compaction.
//
// Journal compaction rewrites the journal from the in-memory state (floor entry, per-recipient
// outcomes and attempts of live messages, done entries of messages whose segment file still
// exists) into journal.tmp, fdatasyncs it, renames it over `journal` and fsyncs the directory:
// a crash leaves either the old or the new journal, each complete. It runs synchronously at
// recovery. While running it is incremental, so that no loop iteration stalls: once the
// committed journal passed options::journal_compact_bytes, each prepare_batch() walks a slice
// of the in-memory state into an image while the batches committed meanwhile are kept as a
// tail; when the walk is done (and the journal is journal_compact_ratio times the image), the
// next batch writes its entries to both journals and image + tail to journal.tmp, syncs both,
// and its completion renames journal.tmp over journal (the next batch fsyncs the directory; an
// idle shard makes a batch of that fsync alone). Nothing big happens in one loop iteration: the
// image and tail grow in 1 MiB blocks (no reallocating copy), the blocks are freed 4 per batch
// afterwards, and the replaced journal, unlinked but still open, is released on the ring by an
// io-wq worker once the rename is durable (prepare_release / complete_release): holes of
// release_punch_bytes, then its close, as for a reclaimed segment (a close that freed all of
// 80 MB at once took tens of ms and held up the fdatasyncs). The next compaction waits for that
// close. A failed runtime compaction leaves the old journal in use and is retried after another
// journal_compact_bytes.
//
// Message data streams to disk as it arrives. A message holds its body in memory only up to
// options::stream_threshold; past it (or earlier, when the shard is over its budget) it gets a
// file of its own, `message-<N>`, whose body region is written by stream batches
// (prepare_stream / complete_stream: plain writes, no sync, one in flight at a time, apart from
// the commit batch). Its record header, added headers and trailer are written only by the commit
// batch, with an fdatasync of the file (and a full fsync of the directory, for the new name):
// until then the file holds no valid record, so a crash mid-upload leaves nothing recovery
// would deliver, and recovery deletes it. The record leaves room for the added headers before
// the body (the header's pad length), so the body is never moved. unwritten_bytes() is the
// memory held by message bytes not yet on disk (chunks allocated, in any state); past
// options::unwritten_budget the spool is over_budget() and the daemon stops reading from the
// sessions that are receiving data until writes complete (back-pressure, never an error).
//
// Failures are values: a failed batch fails every message in it (the daemon answers 451/452
// 4.3.x), seals the segment it touched and puts its journal entries back in the queue; the spool
// keeps serving and the next batch goes to a fresh segment.
//
// How the reactor drives it:
//   if (auto* b = sp.prepare_batch()) { submit b->writes linked, then fdatasync each b->sync_fds;
//                                       on the last completion: for (c : sp.complete_batch(res)) }
// A batch may hold no writes when every record in it failed before reaching the disk (segment
// creation failed): submit nothing and call complete_batch(0) at once.
#pragma once

#include "ringmail/core/oncore.h"
#include "ringmail/core/result.h"
#include "ringmail/mail/envelope.h"
#include "ringmail/spool/errc.h"

#include <fmt/core.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <sys/uio.h>
#include <unordered_map>
#include <vector>

namespace ringmail::spool {

// shard (12 bits) | id block (32 bits, a segment sequence number) | index in the block (20 bits).
// Blocks are segment sequence numbers, which are persisted (segment names and the journal's
// floor entry), so ids never repeat within a spool_dir across shards and restarts.
using queue_id = std::uint64_t;
inline constexpr unsigned queue_id_shard_bits = 12;
inline constexpr unsigned queue_id_index_bits = 20;
inline constexpr unsigned max_shards = 1u << queue_id_shard_bits;

// A queue id as text: 16 uppercase hex digits, held in place (it names a message in every log
// line and reply about it, several times per message: no allocation for that). Formats with fmt
// and converts to std::string_view; std::string(id.view()) where a string must own it.
struct queue_id_text {
    char digits[16];
    std::string_view view() const { return {digits, sizeof digits}; }
    operator std::string_view() const { return view(); }
    friend bool operator==(const queue_id_text& a, std::string_view b) { return a.view() == b; }
};
queue_id_text format_queue_id(queue_id);
inline unsigned queue_id_shard(queue_id id) {
    return unsigned(id >> 52);
}

struct options {
    std::uint64_t segment_size = 64 << 20;
    std::uint64_t max_message_size = 52428800;       // body bytes (transmission form) per message
    std::uint64_t journal_compact_bytes = 64 << 20;  // committed journal size that triggers...
    std::uint64_t journal_compact_ratio = 4;     // ...if also this many times the compacted size
    std::size_t journal_compact_slice = 32768;   // buckets (or done entries) walked per batch
    std::uint64_t stream_threshold = 256 << 10;  // body bytes held in memory before streaming
    std::uint64_t unwritten_budget = 32 << 20;   // unwritten bytes past which over_budget()
    // Delivery outcomes wait this long (or until this many bytes) before a batch takes them:
    // each batch that carries journal entries costs a second fdatasync. See "group commit".
    std::chrono::milliseconds journal_delay{20};
    std::size_t journal_batch_bytes = 256 << 10;
    // A released file's extents (a reclaimed segment, a replaced journal) are freed this many bytes
    // at a time (0: all at its close).
    std::uint64_t release_punch_bytes = 1 << 20;
};

struct write_op {
    int fd;
    std::uint64_t offset;
    std::vector<iovec> iov;  // at most IOV_MAX entries
};

// Writes (to different fds, or to consecutive ranges of one fd) then the fds to fdatasync after
// all writes completed. The memory behind the iovecs lives until complete_batch().
struct commit_batch {
    std::vector<write_op> writes;
    std::vector<int> sync_fds;
    std::vector<int> fsync_fds;  // full fsync after the fdatasyncs (the directory: new names)
};

// pwritev loop + fdatasync, for tests and start-up. Returns 0 or -errno.
int execute_batch_sync(const commit_batch&);

// One step of releasing a file off the loop, run by an io-wq worker: a hole punched in it
// (FALLOC_FL_PUNCH_HOLE, when punch_length > 0) or its close. The file is unlinked and this is
// its last reference, so the close frees whatever extents are left. Freeing all of a 64 MiB
// segment at its close held ext4's block group (mounted with discard) for 40-160 ms, and every
// fdatasync of both shards waited meanwhile; in 1 MiB holes each step holds it for a moment
// (issue 18). Its result does not matter to durability.
struct release_op {
    int fd = -1;
    std::uint64_t punch_offset = 0;
    std::uint64_t punch_length = 0;  // 0: close
};
int execute_release_sync(const release_op&);

// delivered, bounced and expired are final; delay_noticed is not (the recipient is still pending
// and has had its one delay notice, RFC 3461), and a final outcome journaled later replaces it.
enum class outcome : std::uint8_t { delivered = 1, bounced = 2, expired = 3, delay_noticed = 4 };

// Views point into the segment's mapping and stay valid until the message is marked done (and
// that record committed) or the spool is destroyed.
struct stored_message {
    queue_id id = 0;
    mail::envelope env;
    std::string_view added_headers;
    std::string_view body;
};

struct recovered_message {
    stored_message msg;
    std::vector<bool> rcpt_done;           // per RCPT: a final outcome was journaled
    std::vector<outcome> rcpt_outcome;     // meaningful where rcpt_done
    std::vector<bool> rcpt_delay_noticed;  // per RCPT: pending, its delay notice already sent
    std::uint32_t attempts = 0;
    std::int64_t next_attempt = 0;  // unix seconds, 0 = none journaled
};

struct spool_metrics {
    std::uint64_t pending_bytes = 0;   // record + journal bytes waiting for the next batch
    std::uint64_t inflight_bytes = 0;  // bytes of the batch in flight
    std::uint64_t segments_live = 0;   // segment files held open
    std::uint64_t messages_live = 0;   // committed, not yet done
    std::uint64_t journal_bytes = 0;   // committed size of the journal file
    std::uint64_t batches_committed = 0;
    std::uint64_t batches_failed = 0;
    std::uint64_t segments_reclaimed = 0;
    std::uint64_t journal_compactions = 0;  // while running (not counting recovery)
    std::uint64_t journal_compaction_failures = 0;
    std::uint64_t unwritten_bytes = 0;    // memory held by message bytes not yet written
    std::uint64_t streamed_messages = 0;  // messages that got a file of their own
    std::uint64_t stream_batches_failed = 0;
};

class spool {
  public:
    using writer_id = std::uint32_t;

    // Creates the directory, takes an exclusive lock on it (errc::locked when another process
    // holds it). Call recover() next, before anything else.
    static result<std::unique_ptr<spool>> open(const std::filesystem::path& shard_dir,
                                               unsigned shard, const options&);
    ~spool();
    spool(const spool&) = delete;
    spool& operator=(const spool&) = delete;

    // Once, right after open: every committed message not fully done, with its journaled
    // per-recipient outcomes. Torn tails are dropped, the journal is compacted and segments
    // without live messages are deleted. Synchronous.
    result<std::vector<recovered_message>> recover();

    // Reception: one message per session at a time, many sessions in parallel.
    result<writer_id> begin(const mail::envelope&);
    // The id the message gets if it is finished (drawn at begin(), for the Received header).
    queue_id writer_queue_id(writer_id) const;
    result<void> append(writer_id, std::string_view transmission_form_bytes);
    // Joins the pending batch; `token` comes back from complete_batch(). The writer is closed
    // whatever the result.
    result<queue_id> finish(writer_id, std::string_view added_headers, std::uint64_t token);
    void abort(writer_id);

    // Delivery outcomes, journaled by a batch within options::journal_delay (sooner once
    // journal_batch_bytes are waiting). Unknown ids are ignored. Nothing is acknowledged on the
    // strength of these entries, so a crash in that window only repeats work: a delivery, a
    // retry count, a notice (at least once, never lost).
    void record_rcpt(queue_id, std::uint32_t rcpt_index, outcome);
    void record_attempt(queue_id, std::uint32_t attempts, std::int64_t next_attempt_unix);
    // Every recipient final: once this entry is committed the message is gone and its segment
    // is reclaimed when all its messages are.
    void record_done(queue_id);

    // Group commit.
    bool has_pending() const;
    // nullptr if nothing is ready or a batch is in flight. With `now`, journal entries go only
    // once due (journal_due()); without it every pending entry is due (tests, shutdown).
    using clock = std::chrono::steady_clock;
    const commit_batch* prepare_batch(std::optional<clock::time_point> now = std::nullopt);
    // When the journal entries waiting for a batch become due; nullopt if none wait.
    std::optional<clock::time_point> journal_due() const;
    // What is pending is journal entries alone, held until journal_due(): prepare_batch(now)
    // gives nothing before then, so its caller's timer for that time is all it needs.
    bool holds_journal_only() const;
    struct committed {
        std::uint64_t token;
        result<queue_id> id;
    };
    // res = 0 if every write was complete and every fdatasync succeeded, else -errno.
    std::vector<committed> complete_batch(int res);
    bool in_flight() const { return _inflight != nullptr; }

    // Streaming: the body bytes of streaming messages that are ready to go to disk, as plain
    // writes (no sync_fds); nullptr if nothing or a stream batch is in flight. Over budget it
    // also moves messages still in memory to their own files, so that memory can be freed.
    // The iovecs live until complete_stream(res) (0, or -errno: the messages written fail).
    const commit_batch* prepare_stream();
    void complete_stream(int res);
    bool stream_in_flight() const { return _stream != nullptr; }
    std::uint64_t unwritten_bytes() const { return _unwritten; }

    // A step to run on the ring, then complete_release(res) (any res), for the journal a
    // runtime compaction replaced (once the rename is durable) or a reclaimed segment or message
    // file (each unlinked, still open): a hole from its end backwards, release_punch_bytes at a
    // time, then its close (at once if a punch fails: the filesystem may not punch holes).
    // nullptr if none, or one in flight. The owner waits for one in flight before destroying
    // the spool.
    const release_op* prepare_release();
    void complete_release(int res);
    bool release_in_flight() const;
    bool over_budget() const { return _unwritten >= _opt.unwritten_budget; }

    result<stored_message> read(queue_id) const;

    spool_metrics metrics() const;
    const std::filesystem::path& dir() const { return _dir; }

    // Opaque, defined in spool.cc.
    struct segment;
    struct record;
    struct batch;
    struct writer;
    struct location;
    struct stream_batch;
    struct compaction;
    struct release;

  private:
    spool(std::filesystem::path dir, unsigned shard, const options& opt, int dir_fd, int lock_fd);

    result<segment*> create_segment(std::uint64_t capacity);
    result<segment*> create_message_file(std::uint64_t capacity);
    result<void> spill(writer&);
    void flush_writer(writer&, stream_batch&);
    result<void> rotate(std::uint64_t min_capacity);
    void maybe_reclaim(segment*);
    void journal_entry(std::uint8_t type, queue_id id, std::uint64_t a, std::uint64_t b);
    std::uint64_t compacted_journal_entries() const;
    result<void> compact_journal();
    void maybe_compact();
    void compaction_step();
    void end_compaction(bool failed);
    void swap_journal();
    void retire_blocks(compaction&);
    void release_step();
    // A file's size rounded up to whole release_punch_bytes (0 when holes are off), and the
    // step after `left` bytes remain: a hole ending there, or the close.
    std::uint64_t whole_steps(std::uint64_t size) const;
    release_op next_release_step(int fd, std::uint64_t left) const;
    bool release_awaits_dir_sync() const;
    result<stored_message> decode_at(const location&) const;

    core::oncore _oncore;
    std::filesystem::path _dir;
    unsigned _shard;
    options _opt;
    int _dir_fd;
    int _lock_fd;
    int _journal_fd = -1;
    std::uint64_t _journal_offset = 0;
    // When the oldest journal entry waiting in _pending was first seen by prepare_batch(now).
    std::optional<std::chrono::steady_clock::time_point> _journal_since;
    bool _recovered = false;
    std::uint64_t _compact_at = 0;  // committed journal size at which compaction is considered

    std::uint64_t _next_seq = 1;  // next segment sequence number
    std::uint64_t _id_block = 0;  // sequence number whose id block finish() draws from
    std::uint64_t _id_index = 0;

    // Segments by sequence number, message files by message_file_key | number.
    std::unordered_map<std::uint64_t, std::unique_ptr<segment>> _segments;
    segment* _current = nullptr;  // where the next batch appends; nullptr when sealed by a failure
    std::unordered_map<queue_id, std::unique_ptr<location>> _live;

    // Charged by every chunk of message bytes for as long as it is allocated (declared before
    // the chunks' owners, so it outlives them).
    std::uint64_t _unwritten = 0;
    std::vector<std::unique_ptr<writer>> _writers;  // slot index = low bits of writer_id
    std::vector<std::uint32_t> _free_writers;

    std::unique_ptr<batch> _pending;
    std::unique_ptr<batch> _inflight;
    std::unique_ptr<stream_batch> _stream;    // in flight
    std::unique_ptr<compaction> _compaction;  // a runtime compaction under way
    std::unique_ptr<release> _release;        // what the last one left, released in slices
    // Reclaimed segment and message files, unlinked but still open: their extents are freed
    // on the ring, one file and one step at a time, through prepare_release (release_op says
    // why in steps). `left`: the bytes from offset 0 not yet punched.
    struct unlinked_file {
        int fd = -1;
        std::uint64_t left = 0;
    };
    std::vector<unlinked_file> _unlinked_files;  // waiting
    unlinked_file _unlinking;                    // being released (fd -1: none)
    release_op _unlinked_op;
    bool _unlinked_in_flight = false;
    std::uint64_t _next_stream = 1;  // next message-<N> file number
    bool _dir_dirty = false;         // a message file was created since the last directory fsync
    spool_metrics _m;
};

}  // namespace ringmail::spool

template <>
struct fmt::formatter<ringmail::spool::queue_id_text> : fmt::formatter<std::string_view> {
    template <typename Context>
    auto format(const ringmail::spool::queue_id_text& id, Context& ctx) const {
        return fmt::formatter<std::string_view>::format(id.view(), ctx);
    }
};
