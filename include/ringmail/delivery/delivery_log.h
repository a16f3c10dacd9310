// The delivery log: one JSON object per line for every event in a message's life (Reception,
// Delivery, TransientFailure, Bounce, Expiration), for operators' tools (jq, log shippers).
//
// One per shard, owned by it. Events are formatted into a bounded per-shard buffer and written
// with one write(2) per loop iteration (O_APPEND: the shards share the file, each write lands
// whole at the end). SIGHUP reopens the file (log rotation): the daemon bumps a generation the
// shard compares at its next flush. Failures never touch mail: an unwritable log is reported on
// stderr (once per failure run) and its lines are dropped, and a full buffer drops lines and
// counts them, so a stuck disk cannot grow memory or stall delivery.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

namespace ringmail::delivery {

enum class delivery_event { reception, delivery, transient_failure, bounce, expiration };

std::string_view event_name(delivery_event e) noexcept;

// One event. Absent text fields are empty; numbers below zero are left out.
struct delivery_record {
    delivery_event type = delivery_event::reception;
    std::int64_t time_ms = 0;  // Unix time in milliseconds
    std::string_view queue_id;
    std::string_view message_id;
    std::string_view sender;
    std::string_view recipient;    // Reception: empty (see recipients)
    std::uint32_t recipients = 0;  // Reception: how many
    std::string_view client_ip;    // Reception
    std::string_view mx_host;
    std::string_view mx_ip;
    std::string_view source;    // egress source of the attempt (shaping), "" = none
    std::string_view reply;     // the SMTP reply (or our own reason) as one line
    std::string_view category;  // failures: the bounce category ("InvalidRecipient")
    std::int64_t attempt = -1;
    std::int64_t latency_ms = -1;  // since reception
    std::int64_t size = -1;
};

// Appends the record as one JSON line (RFC 8259 escaping; bytes that are not UTF-8 become
// U+FFFD, so every line parses) to `out`.
void format_delivery_record(const delivery_record& r, std::string& out);

// Text of the Message-ID header of a message in transmission form ("" when absent or past the
// header block); unfolded, trimmed, at most 998 octets. Looks at the header block only.
std::string_view find_message_id(std::string_view message, std::string& scratch);

class delivery_log {
  public:
    // `path` empty: disabled (every call is a no-op). `generation` is the daemon's reopen
    // counter (SIGHUP); it must outlive the log.
    delivery_log(std::string path, const std::atomic<std::uint64_t>& generation,
                 std::size_t max_buffer = 4u << 20);
    ~delivery_log();
    delivery_log(const delivery_log&) = delete;
    delivery_log& operator=(const delivery_log&) = delete;

    bool enabled() const noexcept { return !_path.empty(); }
    void add(const delivery_record& r);
    // Writes what is buffered (once per loop iteration), reopening first when the generation
    // moved. Returns false when the write failed (the lines are dropped).
    bool flush();
    std::uint64_t dropped() const noexcept { return _dropped; }

  private:
    bool reopen();

    std::string _path;
    const std::atomic<std::uint64_t>& _generation;
    std::uint64_t _seen_generation = 0;
    std::size_t _max_buffer;
    std::string _buffer;
    int _fd = -1;
    bool _failing = false;
    std::uint64_t _dropped = 0;
};

}  // namespace ringmail::delivery
