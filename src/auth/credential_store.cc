#include "ringmail/auth/credential_store.h"

#include "ringmail/auth/errc.h"
#include "ringmail/auth/secret.h"
#include "ringmail/core/base64.h"
#include "ringmail/core/log.h"

#include <climits>
#include <fmt/format.h>
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/hash.h>
#include <wolfssl/wolfcrypt/pwdbased.h>

#include <argon2.h>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <vector>

namespace ringmail::auth {

namespace {

constexpr std::string_view argon2id_prefix = "$argon2id$";
constexpr std::string_view pbkdf2_prefix = "$pbkdf2-sha256$";

// A hash of 32 random bytes nobody knows, with the default argon2id parameters: what an
// unknown user is verified against while the store has no entry to borrow the cost from.
constexpr std::string_view builtin_dummy =
    "$argon2id$v=19$m=19456,t=2,p=1$D1ouuePaGNBUPnDSI022Cg$"
    "Lc/34TMGSLGR4ANTamxUEmML8hZDg1D/9eiwBPJC2FE";

// Accepted ranges (see the header): generous for real deployments, small enough that a typo
// in the users file cannot make one verification take minutes or gigabytes.
constexpr std::uint32_t argon2_max_m_kib = 1048576;
constexpr std::uint32_t argon2_max_t = 64;
constexpr std::uint32_t argon2_max_p = 16;
constexpr std::uint32_t pbkdf2_max_iterations = 10000000;
constexpr std::size_t min_hash_octets = 16;
constexpr std::size_t max_hash_octets = 64;

std::vector<std::string_view> split(std::string_view s, char sep) {
    std::vector<std::string_view> out;
    std::size_t start = 0;
    for (;;) {
        const std::size_t at = s.find(sep, start);
        if (at == std::string_view::npos) {
            out.push_back(s.substr(start));
            return out;
        }
        out.push_back(s.substr(start, at - start));
        start = at + 1;
    }
}

// Decimal without sign or leading zeros, within [lo, hi].
std::optional<std::uint32_t> parse_u32(std::string_view s, std::uint32_t lo, std::uint32_t hi) {
    if (s.empty() || (s.size() > 1 && s[0] == '0'))
        return std::nullopt;
    std::uint32_t v = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || end != s.data() + s.size() || v < lo || v > hi)
        return std::nullopt;
    return v;
}

// "key=value" with the expected key.
std::optional<std::uint32_t> parse_param(std::string_view s, std::string_view key, std::uint32_t lo,
                                         std::uint32_t hi) {
    if (s.size() <= key.size() + 1 || s.substr(0, key.size()) != key || s[key.size()] != '=')
        return std::nullopt;
    return parse_u32(s.substr(key.size() + 1), lo, hi);
}

// The PHC strings use standard base64 without padding.
std::optional<std::string> decode_unpadded(std::string_view s) {
    if (s.find('=') != std::string_view::npos || s.size() % 4 == 1)
        return std::nullopt;
    std::string padded(s);
    padded.append((4 - s.size() % 4) % 4, '=');
    return core::base64_decode(padded);
}

bool bad_hash_length(std::size_t n) {
    return n < min_hash_octets || n > max_hash_octets;
}

bool argon2_params_ok(const argon2id_params& p) {
    return p.t_cost >= 1 && p.t_cost <= argon2_max_t && p.parallelism >= 1 &&
           p.parallelism <= argon2_max_p && p.m_cost_kib <= argon2_max_m_kib &&
           p.m_cost_kib >= 8 * p.parallelism;
}

}  // namespace

std::string_view scheme_name(scheme s) noexcept {
    switch (s) {
        case scheme::argon2id:
            return "argon2id";
        case scheme::pbkdf2_sha256:
            return "pbkdf2-sha256";
        case scheme::cram_md5:
            return "cram-md5";
    }
    return "?";
}

std::optional<scheme> parse_scheme(std::string_view name) noexcept {
    if (name == "argon2id")
        return scheme::argon2id;
    if (name == "pbkdf2-sha256")
        return scheme::pbkdf2_sha256;
    if (name == "cram-md5")
        return scheme::cram_md5;
    return std::nullopt;
}

result<std::string> hash_password_argon2id(std::string_view password, const argon2id_params& p) {
    if (password.empty())
        return errc::empty_password;
    if (!argon2_params_ok(p))
        return errc::bad_option;
    unsigned char salt[salt_octets];
    if (!random_bytes(salt, sizeof salt))
        return errc::random_failed;
    std::string encoded(argon2_encodedlen(p.t_cost, p.m_cost_kib, p.parallelism, sizeof salt,
                                          hash_octets, Argon2_id),
                        '\0');
    const int rc = argon2id_hash_encoded(p.t_cost, p.m_cost_kib, p.parallelism, password.data(),
                                         password.size(), salt, sizeof salt, hash_octets,
                                         encoded.data(), encoded.size());
    if (rc != ARGON2_OK)
        return errc::hash_failed;
    encoded.resize(std::strlen(encoded.c_str()));
    return encoded;
}

result<std::string> hash_password_pbkdf2_sha256(std::string_view password,
                                                std::uint32_t iterations) {
    if (password.empty())
        return errc::empty_password;
    if (iterations < 1 || iterations > pbkdf2_max_iterations || password.size() > INT_MAX)
        return errc::bad_option;
    unsigned char salt[salt_octets];
    if (!random_bytes(salt, sizeof salt))
        return errc::random_failed;
    unsigned char out[hash_octets];
    const int rc = wc_PBKDF2(out, reinterpret_cast<const byte*>(password.data()),
                             static_cast<int>(password.size()), salt, sizeof salt,
                             static_cast<int>(iterations), sizeof out, WC_SHA256);
    if (rc != 0)
        return errc::hash_failed;
    return fmt::format("{}i={}${}${}", pbkdf2_prefix, iterations,
                       core::base64_encode({reinterpret_cast<const char*>(salt), sizeof salt}),
                       core::base64_encode({reinterpret_cast<const char*>(out), sizeof out}));
}

result<std::string> hash_password(std::string_view password, scheme s) {
    if (s == scheme::argon2id)
        return hash_password_argon2id(password, argon2id_params{});
    if (s == scheme::cram_md5) {
        if (password.empty())
            return errc::empty_password;
        return format_cram_md5(make_cram_context(password));
    }
    return hash_password_pbkdf2_sha256(password, default_pbkdf2_iterations);
}

std::optional<password_hash> password_hash::parse(std::string_view encoded, std::string* why) {
    auto reject = [why](std::string_view reason) -> std::optional<password_hash> {
        if (why)
            *why = reason;
        return std::nullopt;
    };
    for (const char c : encoded) {
        if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f)
            return reject("hash contains whitespace or control characters");
    }
    password_hash h;
    if (encoded.starts_with(argon2id_prefix)) {
        // "", "argon2id", "v=19", "m=..,t=..,p=..", salt, hash
        const auto parts = split(encoded, '$');
        if (parts.size() != 6)
            return reject(
                "malformed argon2id hash (expected $argon2id$v=19$m=M,t=T,p=P$SALT$HASH)");
        if (parts[2] != "v=19")
            return reject("unsupported argon2id version (expected v=19)");
        const auto params = split(parts[3], ',');
        if (params.size() != 3)
            return reject("malformed argon2id parameters (expected m=M,t=T,p=P)");
        const auto m = parse_param(params[0], "m", 8, argon2_max_m_kib);
        const auto t = parse_param(params[1], "t", 1, argon2_max_t);
        const auto p = parse_param(params[2], "p", 1, argon2_max_p);
        if (!m || !t || !p || *m < 8 * *p)
            return reject(
                "argon2id parameters out of range (m 8..1048576 KiB and >= 8*p, "
                "t 1..64, p 1..16)");
        const auto salt = decode_unpadded(parts[4]);
        const auto hash = decode_unpadded(parts[5]);
        if (!salt || !hash)
            return reject("argon2id salt or hash is not unpadded base64");
        if (salt->size() < 8)
            return reject("argon2id salt shorter than 8 octets");
        if (bad_hash_length(hash->size()))
            return reject("argon2id hash length out of range (16..64 octets)");
        h._scheme = scheme::argon2id;
        h._encoded = encoded;
        return h;
    }
    if (encoded.starts_with(pbkdf2_prefix)) {
        // "", "pbkdf2-sha256", "i=N", salt, hash
        const auto parts = split(encoded, '$');
        if (parts.size() != 5)
            return reject("malformed pbkdf2-sha256 hash (expected $pbkdf2-sha256$i=N$SALT$HASH)");
        const auto i = parse_param(parts[2], "i", 1, pbkdf2_max_iterations);
        if (!i)
            return reject("pbkdf2-sha256 iterations out of range (1..10000000)");
        auto salt = core::base64_decode(parts[3]);
        auto hash = core::base64_decode(parts[4]);
        if (!salt || !hash)
            return reject("pbkdf2-sha256 salt or hash is not padded base64");
        if (salt->empty() || salt->size() > 64)
            return reject("pbkdf2-sha256 salt length out of range (1..64 octets)");
        if (bad_hash_length(hash->size()))
            return reject("pbkdf2-sha256 hash length out of range (16..64 octets)");
        h._scheme = scheme::pbkdf2_sha256;
        h._iterations = *i;
        h._salt = std::move(*salt);
        h._hash = std::move(*hash);
        return h;
    }
    if (encoded.substr(0, cram_md5_prefix.size()) == cram_md5_prefix) {
        auto c = parse_cram_md5(encoded);
        if (!c)
            return reject("malformed {CRAM-MD5} entry (expected 64 hex digits)");
        password_hash h;
        h._scheme = scheme::cram_md5;
        h._cram = *c;
        return h;
    }
    return reject("unknown hash scheme (expected $argon2id$, $pbkdf2-sha256$ or {CRAM-MD5})");
}

verdict password_hash::verify_cram(std::string_view challenge, std::string_view hex_digest) const {
    if (_scheme != scheme::cram_md5)
        return verdict::fail;
    return cram_verify(_cram, challenge, hex_digest) ? verdict::ok : verdict::fail;
}

verdict password_hash::verify(std::string_view password) const {
    if (_scheme == scheme::cram_md5)
        return cram_equal(make_cram_context(password), _cram) ? verdict::ok : verdict::fail;
    if (_scheme == scheme::argon2id) {
        const int rc = argon2id_verify(_encoded.c_str(), password.data(), password.size());
        if (rc == ARGON2_OK)
            return verdict::ok;
        if (rc == ARGON2_VERIFY_MISMATCH)
            return verdict::fail;
        core::log::warn("auth: argon2id verification failed: {}", argon2_error_message(rc));
        return verdict::temporary;
    }
    if (password.size() > INT_MAX)
        return verdict::fail;
    std::string computed(_hash.size(), '\0');
    const int rc =
        wc_PBKDF2(reinterpret_cast<byte*>(computed.data()),
                  reinterpret_cast<const byte*>(password.data()), static_cast<int>(password.size()),
                  reinterpret_cast<const byte*>(_salt.data()), static_cast<int>(_salt.size()),
                  static_cast<int>(_iterations), static_cast<int>(computed.size()), WC_SHA256);
    if (rc != 0) {
        wipe(computed);
        core::log::warn("auth: pbkdf2-sha256 verification failed: wolfSSL error {}", rc);
        return verdict::temporary;
    }
    const bool same = constant_time_equal(computed, _hash);
    wipe(computed);
    return same ? verdict::ok : verdict::fail;
}

credential_store::credential_store()
    : _builtin_dummy(*password_hash::parse(builtin_dummy, nullptr)) {}

bool credential_store::add(std::string user, password_hash hash) {
    if (_users.contains(user))
        return false;
    if (!_first)
        _first = hash;
    if (hash.kind() == scheme::cram_md5)
        _has_cram = true;
    _users.emplace(std::move(user), std::move(hash));
    return true;
}

bool credential_store::contains(std::string_view user) const {
    return _users.find(user) != _users.end();
}

verdict credential_store::verify(std::string_view user, std::string_view password) const {
    const auto it = _users.find(user);
    if (it == _users.end()) {
        // Same work as for a real user, result thrown away: no enumeration by timing. A
        // temporary failure is still reported as such, as it would be for a known user.
        const verdict v = (_first ? *_first : _builtin_dummy).verify(password);
        return v == verdict::temporary ? verdict::temporary : verdict::fail;
    }
    return it->second.verify(password);
}

verdict credential_store::verify_cram(std::string_view user, std::string_view challenge,
                                      std::string_view hex_digest) const {
    const auto it = _users.find(user);
    if (it == _users.end() || it->second.kind() != scheme::cram_md5) {
        (void)cram_verify(_cram_dummy, challenge, hex_digest);  // the same work either way
        return verdict::fail;
    }
    return it->second.verify_cram(challenge, hex_digest);
}

bool valid_user_name(std::string_view user) noexcept {
    if (user.empty() || user.size() > 255)
        return false;
    for (const char c : user) {
        const auto u = static_cast<unsigned char>(c);
        if (u <= 0x20 || u == 0x7f || c == ':')
            return false;
    }
    return true;
}

loaded_users parse_users(std::string_view text, std::string_view source_name) {
    loaded_users out;
    credential_store store;
    std::unordered_map<std::string, std::size_t> first_line;
    std::string errors;
    auto error = [&](std::size_t line, std::string_view what) {
        errors += fmt::format("{}:{}: {}\n", source_name, line, what);
    };
    std::size_t line_no = 0;
    std::size_t pos = 0;
    while (pos < text.size()) {
        ++line_no;
        std::size_t end = text.find('\n', pos);
        if (end == std::string_view::npos)
            end = text.size();
        std::string_view line = text.substr(pos, end - pos);
        pos = end + 1;
        if (line.ends_with('\r'))
            line.remove_suffix(1);
        const std::size_t first = line.find_first_not_of(" \t");
        if (first == std::string_view::npos || line[first] == '#')
            continue;
        const std::size_t colon = line.find(':');
        if (colon == std::string_view::npos) {
            error(line_no, "expected user:hash");
            continue;
        }
        const std::string_view user = line.substr(0, colon);
        const std::string_view hash = line.substr(colon + 1);
        if (user.empty()) {
            error(line_no, "empty user name");
            continue;
        }
        const std::string shown = core::log::sanitize(user, 64);
        if (user.size() > 255) {
            error(line_no, fmt::format("user \"{}\": name longer than 255 octets", shown));
            continue;
        }
        if (!valid_user_name(user)) {
            error(line_no, fmt::format("user \"{}\": name contains whitespace or control "
                                       "characters",
                                       shown));
            continue;
        }
        std::string why;
        std::optional<password_hash> parsed = password_hash::parse(hash, &why);
        if (!parsed) {
            error(line_no, fmt::format("user \"{}\": {}", shown, why));
            continue;
        }
        const auto [it, inserted] = first_line.emplace(std::string(user), line_no);
        if (!inserted) {
            error(line_no, fmt::format("user \"{}\": duplicate (first defined on line {})", shown,
                                       it->second));
            continue;
        }
        store.add(std::string(user), std::move(*parsed));
    }
    if (!errors.empty()) {
        errors.pop_back();
        out.error = std::move(errors);
        return out;
    }
    out.store = std::move(store);
    return out;
}

loaded_users load_users_file(const std::filesystem::path& path) {
    loaded_users out;
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (f == nullptr) {
        out.error = fmt::format("{}: cannot open: {}", path.string(), std::strerror(errno));
        return out;
    }
    std::string text;
    char buf[65536];
    for (;;) {
        const std::size_t n = std::fread(buf, 1, sizeof buf, f);
        text.append(buf, n);
        if (n < sizeof buf)
            break;
    }
    const bool failed = std::ferror(f) != 0;
    const int err = errno;
    std::fclose(f);
    if (failed) {
        wipe(text);
        out.error = fmt::format("{}: cannot read: {}", path.string(), std::strerror(err));
        return out;
    }
    out = parse_users(text, path.string());
    wipe(text);
    return out;
}

}  // namespace ringmail::auth
