#include "ringmail/queue/suspensions.h"

#include "ringmail/core/ascii.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <fcntl.h>
#include <limits>
#include <sys/stat.h>
#include <unistd.h>

namespace ringmail::queue {

namespace {

constexpr std::string_view header_line = "ringmail-suspensions 2";
constexpr std::string_view header_line_v1 = "ringmail-suspensions 1";

std::string lower(std::string_view s) {
    std::string out(s);
    for (char& c : out)
        c = core::to_lower_ascii(c);
    return out;
}

bool valid_name(std::string_view s, bool may_be_empty) {
    if (s.empty())
        return may_be_empty;
    if (s.size() > suspensions::max_name)
        return false;
    for (const char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (u <= 0x20 || u == 0x7f)
            return false;
    }
    return true;
}

ringmail::failure err(std::errc e) {
    return ringmail::failure(std::make_error_code(e));
}
ringmail::failure from_errno(int e) {
    return ringmail::failure(std::error_code(e, std::generic_category()));
}

// Reasons are one line of text: \\, \t, \n escaped, other controls become spaces.
std::string escape(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (const char c : s) {
        if (c == '\\')
            out += "\\\\";
        else if (c == '\t')
            out += "\\t";
        else if (c == '\n')
            out += "\\n";
        else
            out += c;
    }
    return out;
}

std::string unescape(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 1 < s.size()) {
            const char n = s[++i];
            out += n == 't' ? '\t' : n == 'n' ? '\n' : n;
        } else {
            out += s[i];
        }
    }
    return out;
}

// Reasons and rule names: one line of at most max_reason octets, controls become spaces.
void one_line(std::string& s) {
    if (s.size() > suspensions::max_reason)
        s.resize(suspensions::max_reason);
    for (char& c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f)
            c = ' ';
    }
}

bool parse_i64(std::string_view s, std::int64_t& v) {
    if (s.empty())
        return false;
    const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    return ec == std::errc{} && p == s.data() + s.size();
}

result<void> write_all(int fd, std::string_view data) {
    while (!data.empty()) {
        const ssize_t n = ::write(fd, data.data(), data.size());
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return from_errno(errno);
        }
        data.remove_prefix(static_cast<std::size_t>(n));
    }
    return {};
}

}  // namespace

std::string_view to_string(suspension_kind k) noexcept {
    return k == suspension_kind::provider ? "provider" : "domain";
}

std::string_view to_string(suspension_effect e) noexcept {
    return e == suspension_effect::set ? "set" : "suspend";
}

std::string suspensions::key(suspension_kind kind, std::string_view name) {
    std::string k(1, kind == suspension_kind::provider ? 'p' : 'd');
    k.reserve(1 + name.size());
    for (const char c : name)
        k += core::to_lower_ascii(c);
    return k;
}

result<void> suspensions::suspend(suspension s) {
    if (!valid_name(s.scope.name, false) || !valid_name(s.scope.source, true) ||
        s.until_unix <= s.since_unix || !(s.set_rate >= 0.0))
        return err(std::errc::invalid_argument);
    s.scope.name = lower(s.scope.name);
    one_line(s.reason);
    one_line(s.rule);
    // Older releases wrote "admin" and "shaping".
    if (s.origin == "shaping" || s.origin == origin_rule)
        s.origin = std::string(origin_rule);
    else
        s.origin = std::string(origin_operator);
    auto& list = _by_name[key(s.scope.kind, s.scope.name)];
    for (auto& e : list) {
        if (e.scope.source == s.scope.source && e.effect == s.effect) {
            e = std::move(s);
            ++_generation;
            return {};
        }
    }
    if (_size >= max_entries) {
        if (list.empty())
            _by_name.erase(key(s.scope.kind, s.scope.name));
        return err(std::errc::no_buffer_space);
    }
    list.push_back(std::move(s));
    ++_size;
    ++_generation;
    return {};
}

result<bool> suspensions::merge(suspension s) {
    if (const auto it = _by_name.find(key(s.scope.kind, s.scope.name)); it != _by_name.end()) {
        for (const auto& e : it->second) {
            if (e.scope.source == s.scope.source && e.effect == s.effect &&
                e.until_unix >= s.until_unix)
                return false;
        }
    }
    if (auto r = suspend(std::move(s)); !r)
        return ringmail::failure(r.error());
    return true;
}

bool suspensions::resume(const suspension_scope& scope) {
    const auto it = _by_name.find(key(scope.kind, scope.name));
    if (it == _by_name.end())
        return false;
    auto& list = it->second;
    const std::size_t n =
        std::erase_if(list, [&](const suspension& s) { return s.scope.source == scope.source; });
    if (n == 0)
        return false;
    _size -= n;
    if (list.empty())
        _by_name.erase(it);
    ++_generation;
    return true;
}

std::size_t suspensions::resume_all(suspension_kind kind, std::string_view name,
                                    std::vector<suspension>* removed) {
    const auto it = _by_name.find(key(kind, name));
    if (it == _by_name.end())
        return 0;
    const std::size_t n = it->second.size();
    if (removed != nullptr)
        removed->insert(removed->end(), it->second.begin(), it->second.end());
    _size -= n;
    _by_name.erase(it);
    ++_generation;
    return n;
}

const suspension* suspensions::find(suspension_kind kind, std::string_view name,
                                    std::string_view source, std::int64_t now_unix) const {
    if (_size == 0)
        return nullptr;
    const auto it = _by_name.find(key(kind, name));
    if (it == _by_name.end())
        return nullptr;
    const suspension* any = nullptr;
    for (const auto& s : it->second) {
        if (s.until_unix <= now_unix || s.effect != suspension_effect::suspend)
            continue;
        if (!source.empty() && s.scope.source == source)
            return &s;
        if (s.scope.source.empty())
            any = &s;
    }
    return any;
}

std::size_t suspensions::expire(std::int64_t now_unix) {
    std::size_t n = 0;
    for (auto it = _by_name.begin(); it != _by_name.end();) {
        auto& list = it->second;
        const auto before = list.size();
        std::erase_if(list, [&](const suspension& s) { return s.until_unix <= now_unix; });
        n += before - list.size();
        if (list.empty())
            it = _by_name.erase(it);
        else
            ++it;
    }
    if (n > 0) {
        _size -= n;
        ++_generation;
    }
    return n;
}

std::int64_t suspensions::next_expiry() const noexcept {
    std::int64_t best = 0;
    for (const auto& [k, list] : _by_name)
        for (const auto& s : list)
            if (best == 0 || s.until_unix < best)
                best = s.until_unix;
    return best;
}

std::vector<suspension> suspensions::list() const {
    std::vector<suspension> out;
    out.reserve(_size);
    for (const auto& [k, list] : _by_name)
        out.insert(out.end(), list.begin(), list.end());
    std::sort(out.begin(), out.end(), [](const suspension& a, const suspension& b) {
        if (a.scope.kind != b.scope.kind)
            return a.scope.kind < b.scope.kind;
        if (a.scope.name != b.scope.name)
            return a.scope.name < b.scope.name;
        if (a.scope.source != b.scope.source)
            return a.scope.source < b.scope.source;
        return a.effect < b.effect;
    });
    return out;
}

std::size_t suspensions::count(std::string_view origin) const noexcept {
    std::size_t n = 0;
    for (const auto& [k, list] : _by_name)
        for (const auto& s : list)
            n += s.origin == origin ? 1 : 0;
    return n;
}

std::string suspensions::serialize() const {
    std::string out(header_line);
    out += '\n';
    for (const auto& s : list()) {
        out += fmt::format("{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n", to_string(s.scope.kind),
                           s.scope.name, s.scope.source.empty() ? "*" : s.scope.source,
                           s.since_unix, s.until_unix, s.origin, to_string(s.effect), s.set_rate,
                           s.set_connections, escape(s.rule), escape(s.reason));
    }
    return out;
}

result<suspensions> suspensions::parse(std::string_view text, std::int64_t now_unix) {
    suspensions out;
    bool first = true;
    std::size_t fields = 11;  // version 2; version 1 had no effect, rate, connections, rule
    while (!text.empty()) {
        const auto nl = text.find('\n');
        if (nl == std::string_view::npos)
            return err(std::errc::illegal_byte_sequence);  // cut short: not ours, or torn
        const std::string_view line = text.substr(0, nl);
        text.remove_prefix(nl + 1);
        if (first) {
            if (line == header_line_v1)
                fields = 7;
            else if (line != header_line)
                return err(std::errc::illegal_byte_sequence);
            first = false;
            continue;
        }
        std::string_view f[11];
        std::string_view rest = line;
        for (std::size_t i = 0; i + 1 < fields; ++i) {
            const auto tab = rest.find('\t');
            if (tab == std::string_view::npos)
                return err(std::errc::illegal_byte_sequence);
            f[i] = rest.substr(0, tab);
            rest.remove_prefix(tab + 1);
        }
        f[fields - 1] = rest;
        suspension s;
        if (f[0] == "domain")
            s.scope.kind = suspension_kind::domain;
        else if (f[0] == "provider")
            s.scope.kind = suspension_kind::provider;
        else
            return err(std::errc::illegal_byte_sequence);
        s.scope.name = std::string(f[1]);
        s.scope.source = f[2] == "*" ? std::string() : std::string(f[2]);
        if (!parse_i64(f[3], s.since_unix) || !parse_i64(f[4], s.until_unix))
            return err(std::errc::illegal_byte_sequence);
        s.origin = std::string(f[5]);
        if (fields == 7) {
            s.reason = unescape(f[6]);
        } else {
            if (f[6] == "set")
                s.effect = suspension_effect::set;
            else if (f[6] != "suspend")
                return err(std::errc::illegal_byte_sequence);
            const auto [rp, rec] =
                std::from_chars(f[7].data(), f[7].data() + f[7].size(), s.set_rate);
            const auto [cp, cec] =
                std::from_chars(f[8].data(), f[8].data() + f[8].size(), s.set_connections);
            if (f[7].empty() || rec != std::errc{} || rp != f[7].data() + f[7].size() ||
                f[8].empty() || cec != std::errc{} || cp != f[8].data() + f[8].size())
                return err(std::errc::illegal_byte_sequence);
            s.rule = unescape(f[9]);
            s.reason = unescape(f[10]);
        }
        if (s.until_unix <= now_unix)
            continue;
        if (auto r = out.suspend(std::move(s)); !r)
            return ringmail::failure(r.error());
    }
    if (first)
        return err(std::errc::illegal_byte_sequence);
    return out;
}

result<void> suspensions::save_file(const std::string& path) const {
    const std::string tmp = path + ".tmp";
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return from_errno(errno);
    auto r = write_all(fd, serialize());
    if (r && ::fsync(fd) != 0)
        r = from_errno(errno);
    ::close(fd);
    if (r && ::rename(tmp.c_str(), path.c_str()) != 0)
        r = from_errno(errno);
    if (!r) {
        ::unlink(tmp.c_str());
        return r;
    }
    const auto slash = path.rfind('/');
    const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return from_errno(errno);
    const int rc = ::fsync(dfd);
    const int e = errno;
    ::close(dfd);
    if (rc != 0)
        return from_errno(e);
    return {};
}

result<suspensions> suspensions::load_file(const std::string& path, std::int64_t now_unix) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return suspensions{};
        return from_errno(errno);
    }
    std::string text;
    char buf[8192];
    // Bounded: max_entries lines of bounded fields.
    constexpr std::size_t max_bytes = max_entries * (2 * max_name + max_reason * 4 + 160) + 64;
    for (;;) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            const int e = errno;
            ::close(fd);
            return from_errno(e);
        }
        if (n == 0)
            break;
        text.append(buf, static_cast<std::size_t>(n));
        if (text.size() > max_bytes) {
            ::close(fd);
            return err(std::errc::file_too_large);
        }
    }
    ::close(fd);
    return parse(text, now_unix);
}

result<suspensions> suspensions::load_and_migrate(const std::string& path,
                                                  const std::string& legacy_path,
                                                  std::int64_t now_unix, std::size_t& migrated) {
    migrated = 0;
    auto store = load_file(path, now_unix);
    if (!store)
        return store;
    if (::access(legacy_path.c_str(), F_OK) != 0)
        return store;
    auto legacy = load_file(legacy_path, now_unix);
    if (!legacy)
        return legacy;
    for (auto& s : legacy->list()) {
        s.origin = std::string(origin_rule);  // only the rules wrote that file
        if (auto r = store->merge(std::move(s)); !r)
            return ringmail::failure(r.error());
        ++migrated;
    }
    // The merged store is on disk before the old file goes: a crash in between reads both
    // again, and merging is idempotent.
    if (auto r = store->save_file(path); !r)
        return ringmail::failure(r.error());
    if (::unlink(legacy_path.c_str()) != 0 && errno != ENOENT)
        return from_errno(errno);
    return store;
}

}  // namespace ringmail::queue
