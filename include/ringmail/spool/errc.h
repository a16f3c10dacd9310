// Errors of ringmail::spool.
//
// Values, not exceptions: every spool entry point that can fail returns result<T> carrying one
// of these. The daemon maps no_space/io_error to 452/451 4.3.x replies and keeps serving; corrupt
// data found at recovery is dropped (torn tails), never delivered.
#pragma once

#include <cerrno>
#include <system_error>

namespace ringmail::spool {

enum class errc {
    message_too_large = 1,  // body or added headers past options::max_message_size
    io_error,               // a write, fdatasync, open, mmap or rename failed (not for space)
    no_space,               // ENOSPC / EDQUOT: the disk is full, retry later
    corrupt,                // a stored record or envelope does not decode
    unknown_queue_id,       // no live committed message has this id
    unknown_writer,         // writer id not open (finished, aborted or never begun)
    locked,                 // another process holds the shard directory
    ids_exhausted,          // the segment sequence space is used up (2^32 segments)
};

const std::error_category& error_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), error_category()};
}

// Maps a kernel error (positive errno) to the spool's own codes.
inline errc from_errno(int err) noexcept {
    return err == ENOSPC || err == EDQUOT ? errc::no_space : errc::io_error;
}

}  // namespace ringmail::spool

template <>
struct std::is_error_code_enum<ringmail::spool::errc> : std::true_type {};
