// RESP2, the Redis protocol: commands encoded as arrays of bulk strings, replies parsed
// incrementally from bytes split anywhere.
//
// Pure (no I/O), owned by one connection and so by one shard. Bounded: a bulk string may hold at
// most max_bulk bytes, an array at most max_elements elements and nesting max_depth levels, a
// simple line max_line bytes; past a bound, or on a byte that is not RESP2, the parser fails for
// good (the connection must be dropped and made again).
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ringmail::cluster {

// One reply. Arrays hold their elements; a null bulk string or array is `nil`.
struct resp_value {
    enum class kind : std::uint8_t { simple, error, integer, bulk, array, nil };
    kind type = kind::nil;
    std::string str;  // simple, error, bulk
    std::int64_t integer = 0;
    std::vector<resp_value> elements;

    bool is_error() const noexcept { return type == kind::error; }
    bool is_nil() const noexcept { return type == kind::nil; }
};

// Appends `*N\r\n$len\r\narg\r\n...` to out.
void encode_command(std::string& out, std::initializer_list<std::string_view> args);
void encode_command(std::string& out, const std::vector<std::string>& args);

class resp_parser {
  public:
    static constexpr std::size_t max_line = 4096;
    static constexpr std::size_t max_bulk = 1 << 20;
    static constexpr std::size_t max_elements = 4096;
    static constexpr std::size_t max_depth = 4;

    // Consumes what it can; complete replies are queued for take().
    void feed(std::string_view bytes);
    bool failed() const noexcept { return _failed; }
    const std::string& error() const noexcept { return _error; }
    std::optional<resp_value> take();
    std::size_t ready() const noexcept { return _done.size() - _taken; }

  private:
    // Parses one value at _buf[_pos...]; false when it needs more bytes.
    bool parse_value(std::size_t& pos, resp_value& out, std::size_t depth);
    bool line_at(std::size_t& pos, std::string_view& line);
    void fail(std::string why);

    std::string _buf;
    std::vector<resp_value> _done;
    std::size_t _taken = 0;
    bool _failed = false;
    std::string _error;
};

}  // namespace ringmail::cluster
