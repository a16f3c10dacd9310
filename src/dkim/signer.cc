#include "ringmail/dkim/signer.h"

#include "ringmail/core/ascii.h"
#include "ringmail/core/base64.h"

#include <fmt/format.h>

namespace ringmail::dkim {

namespace {

using core::equals_nocase;

bool is_wsp(char c) {
    return c == ' ' || c == '\t';
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (is_wsp(s.front()) || s.front() == '\r' || s.front() == '\n'))
        s.remove_prefix(1);
    while (!s.empty() && (is_wsp(s.back()) || s.back() == '\r' || s.back() == '\n'))
        s.remove_suffix(1);
    return s;
}

// Builds a header field folded at the allowed places so that lines stay under 78 octets.
class folder {
  public:
    explicit folder(std::string_view name) : _out(name), _line(name.size()) {}
    void add(std::string_view token, bool space_before) {
        const std::size_t need = token.size() + (space_before ? 1 : 0);
        if (_line + need > limit && _line > 1) {
            _out += "\r\n\t";
            _line = 1;
        } else if (space_before) {
            _out += ' ';
            ++_line;
        }
        _out += token;
        _line += token.size();
    }
    // A value that may be broken anywhere (base64).
    void add_breakable(std::string_view v) {
        while (!v.empty()) {
            if (_line + 8 > limit) {
                _out += "\r\n\t";
                _line = 1;
            }
            const std::size_t room = limit - _line;
            const std::size_t k = v.size() < room ? v.size() : room;
            _out.append(v.substr(0, k));
            _line += k;
            v.remove_prefix(k);
        }
    }
    std::string& text() { return _out; }

  private:
    static constexpr std::size_t limit = 76;
    std::string _out;
    std::size_t _line;
};

}  // namespace

const std::vector<std::string>& default_headers() {
    static const std::vector<std::string> h = {
        "From",
        "Reply-To",
        "Subject",
        "Date",
        "To",
        "Cc",
        "Resent-Date",
        "Resent-From",
        "Resent-To",
        "Resent-Cc",
        "In-Reply-To",
        "References",
        "List-Id",
        "List-Help",
        "List-Unsubscribe",
        "List-Subscribe",
        "List-Post",
        "List-Owner",
        "List-Archive",
        "List-Unsubscribe-Post",
        "Feedback-ID",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
    };
    return h;
}

std::vector<header_field> split_header_fields(std::string_view s) {
    std::vector<header_field> out;
    std::size_t i = 0;
    while (i < s.size()) {
        const std::size_t start = i;
        std::size_t j = i;
        for (;;) {
            const std::size_t lf = s.find('\n', j);
            if (lf == std::string_view::npos) {
                j = s.size();
                break;
            }
            j = lf + 1;
            if (j >= s.size() || !is_wsp(s[j]))
                break;  // the next line is not a continuation
        }
        std::string_view raw = s.substr(start, j - start);
        std::string_view name;
        if (const std::size_t colon = raw.find(':'); colon != std::string_view::npos) {
            name = raw.substr(0, colon);
            while (!name.empty() && is_wsp(name.back()))
                name.remove_suffix(1);
        }
        out.push_back({name, raw});
        i = j;
    }
    return out;
}

std::optional<std::string> from_domain(const std::vector<header_field>& fields, std::string& why) {
    const header_field* from = nullptr;
    for (const auto& f : fields) {
        if (!equals_nocase(f.name, "From"))
            continue;
        if (from != nullptr) {
            why = "several From header fields";
            return std::nullopt;
        }
        from = &f;
    }
    if (from == nullptr) {
        why = "no From header field";
        return std::nullopt;
    }
    // RFC 5322 mailbox-list: split at top-level commas (outside quoted strings, comments and
    // angle brackets), comments dropped.
    std::string_view value = from->raw.substr(from->raw.find(':') + 1);
    std::vector<std::string> addrs(1);
    bool quoted = false;
    int comment = 0;
    int angle = 0;
    bool group = false;
    for (std::size_t i = 0; i < value.size(); ++i) {
        const char c = value[i];
        if (c == '\r' || c == '\n')
            continue;
        if (quoted) {
            if (c == '\\' && i + 1 < value.size()) {
                addrs.back() += c;
                addrs.back() += value[++i];
                continue;
            }
            if (c == '"')
                quoted = false;
            addrs.back() += c;
            continue;
        }
        if (comment > 0) {
            if (c == '\\')
                ++i;
            else if (c == '(')
                ++comment;
            else if (c == ')')
                --comment;
            continue;
        }
        switch (c) {
            case '"':
                quoted = true;
                addrs.back() += c;
                break;
            case '(':
                comment = 1;
                break;
            case '<':
                ++angle;
                addrs.back() += c;
                break;
            case '>':
                if (angle > 0)
                    --angle;
                addrs.back() += c;
                break;
            case ',':
                if (angle == 0)
                    addrs.emplace_back();
                else
                    addrs.back() += c;
                break;
            case ':':
            case ';':
                if (angle == 0)
                    group = true;
                addrs.back() += c;
                break;
            default:
                addrs.back() += c;
        }
    }
    std::erase_if(addrs, [](const std::string& a) { return trim(a).empty(); });
    if (group) {
        why = "a group in the From header field";
        return std::nullopt;
    }
    if (addrs.size() != 1) {
        why = addrs.empty() ? "no address in the From header field"
                            : "several addresses in the From header field";
        return std::nullopt;
    }
    std::string_view a = addrs.front();
    if (const std::size_t lt = a.rfind('<'); lt != std::string_view::npos) {
        a = a.substr(lt + 1);
        a = a.substr(0, a.find('>'));
    }
    a = trim(a);
    const std::size_t at = a.rfind('@');
    std::string_view d = at == std::string_view::npos ? std::string_view() : trim(a.substr(at + 1));
    while (!d.empty() && d.back() == '.')
        d.remove_suffix(1);
    if (d.empty()) {
        why = "no domain in the From address";
        return std::nullopt;
    }
    std::string domain;
    for (char c : d)
        domain += core::to_lower_ascii(c);
    return domain;
}

result<std::string> make_signature(const signature_spec& spec, key_signer& key,
                                   const std::vector<header_field>& fields, const digest& bh,
                                   std::int64_t now) {
    sha256 h;
    std::vector<std::string_view> names;
    std::vector<std::size_t> found;
    for (const auto& name : spec.headers) {
        found.clear();
        for (std::size_t i = 0; i < fields.size(); ++i) {
            if (equals_nocase(fields[i].name, name))
                found.push_back(i);
        }
        const std::size_t times = found.size() + (spec.over_sign ? 1 : 0);
        // Instances are taken from the bottom up (RFC 6376 section 5.4.2); an over-signed name
        // names an instance that does not exist and adds nothing to the hash.
        for (std::size_t k = 0; k < times; ++k) {
            names.push_back(name);
            if (k < found.size())
                h.update(canonicalize_header(spec.header_canon,
                                             fields[found[found.size() - 1 - k]].raw));
        }
    }

    folder f("DKIM-Signature:");
    f.add("v=1;", true);
    f.add(fmt::format("a={};", algorithm_name(key.key().alg())), true);
    f.add(fmt::format("c={}/{};", canon_name(spec.header_canon), canon_name(spec.body_canon)),
          true);
    f.add(fmt::format("d={};", spec.domain), true);
    f.add(fmt::format("s={};", spec.selector), true);
    f.add(fmt::format("t={};", now), true);
    if (spec.expire_after.count() > 0)
        f.add(fmt::format("x={};", now + spec.expire_after.count()), true);
    for (std::size_t i = 0; i < names.size(); ++i) {
        std::string token = i == 0 ? "h=" : "";
        token += names[i];
        token += i + 1 == names.size() ? ";" : ":";
        f.add(token, i == 0);
    }
    const std::string bh64 =
        core::base64_encode(std::string_view(reinterpret_cast<const char*>(bh.data()), bh.size()));
    f.add(fmt::format("bh={};", bh64), true);
    f.add("b=", true);

    // The signature field itself, with an empty b=, ends the hashed data without its CRLF.
    std::string& text = f.text();
    if (spec.header_canon == canon::relaxed) {
        std::string c = canonicalize_header(canon::relaxed, text);
        c.resize(c.size() - 2);
        h.update(c);
    } else {
        h.update(text);
    }
    auto sig = key.sign(h.final());
    if (!sig)
        return failure(sig.error());
    f.add_breakable(core::base64_encode(*sig));
    text += "\r\n";
    return std::move(text);
}

std::shared_ptr<signer> signer::create(std::shared_ptr<const key_set> keys, std::string& why) {
    auto s = std::make_shared<signer>();
    for (const auto& spec : keys->specs) {
        std::string text;
        auto k = key_signer::create(spec.key, text);
        if (!k) {
            why = fmt::format("dkim {} (selector {}): {}", spec.domain, spec.selector, text);
            return nullptr;
        }
        s->_signers.push_back(std::move(k));
    }
    s->_keys = std::move(keys);
    return s;
}

std::vector<std::size_t> signer::select(std::string_view domain) const {
    std::vector<std::size_t> out;
    std::size_t best = 0;
    const auto& specs = _keys->specs;
    for (std::size_t i = 0; i < specs.size(); ++i) {
        const std::string& d = specs[i].domain;
        const bool covers =
            d.size() <= domain.size() &&
            equals_nocase(domain.substr(domain.size() - d.size()), d) &&
            (d.size() == domain.size() || domain[domain.size() - d.size() - 1] == '.');
        if (!covers || d.size() < best)
            continue;
        if (d.size() > best) {
            best = d.size();
            out.clear();
        }
        out.push_back(i);
    }
    return out;
}

message_signer::message_signer(std::shared_ptr<signer> s, std::size_t max_header)
    : _signer(std::move(s)), _split(max_header) {}

void message_signer::update(std::string_view bytes) {
    if (_decided && _specs.empty())
        return;  // not signed: nothing more to look at
    _unstuff.update(bytes, [this](const char* p, std::size_t n) {
        std::string_view in(p, n);
        if (!_split.in_body()) {
            in = _split.update(in);
            if (!_split.in_body())
                return;
            header_done();
        }
        body(in);
    });
}

void message_signer::header_done() {
    _decided = true;
    if (_split.overflowed())
        return;
    auto fields = split_header_fields(_split.header());
    auto domain = from_domain(fields, _note);
    if (!domain)
        return;
    _specs = _signer->select(*domain);
    if (_specs.empty()) {
        _note = fmt::format("no [[dkim]] table for {}", *domain);
        return;
    }
    for (std::size_t i : _specs) {
        const canon c = _signer->keys().specs[i].body_canon;
        if (c == canon::simple && !_simple)
            _simple.emplace(canon::simple);
        if (c == canon::relaxed && !_relaxed)
            _relaxed.emplace(canon::relaxed);
    }
}

void message_signer::body(std::string_view b) {
    if (b.empty())
        return;
    if (_simple)
        _simple->update(b);
    if (_relaxed)
        _relaxed->update(b);
}

result<message_signer::outcome> message_signer::finish(std::int64_t now) {
    _split.finish();
    if (!_decided)
        header_done();
    if (_split.overflowed())
        return errc::header_too_large;
    outcome out;
    if (_specs.empty()) {
        out.note = std::move(_note);
        return out;
    }
    const auto fields = split_header_fields(_split.header());
    digest simple_bh{};
    digest relaxed_bh{};
    if (_simple)
        simple_bh = _simple->finish();
    if (_relaxed)
        relaxed_bh = _relaxed->finish();
    for (std::size_t i : _specs) {
        const auto& spec = _signer->keys().specs[i];
        auto sig = make_signature(spec, _signer->key(i), fields,
                                  spec.body_canon == canon::simple ? simple_bh : relaxed_bh, now);
        if (!sig)
            return failure(sig.error());
        out.headers += *sig;
    }
    return out;
}

}  // namespace ringmail::dkim
