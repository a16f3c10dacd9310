#include "ringmail/dns/route.h"

#include "ringmail/core/ascii.h"
#include "ringmail/dns/wire.h"

#include <ares.h>
#include <fmt/format.h>

#include <algorithm>
#include <arpa/inet.h>
#include <cstring>
#include <netinet/in.h>
#include <optional>

namespace ringmail::dns {

namespace {

// Uniform in [0, n) without modulo bias.
std::uint64_t uniform_below(const random_source& random, std::uint64_t n) {
    const std::uint64_t limit = UINT64_MAX - (UINT64_MAX % n);
    for (;;) {
        const std::uint64_t v = random();
        if (v < limit)
            return v % n;
    }
}

std::chrono::seconds capped(std::uint32_t ttl, std::chrono::seconds cap) {
    return std::min(std::chrono::seconds(ttl), cap);
}

std::chrono::seconds negative_ttl(const std::optional<message_summary>& s, const ttl_policy& p) {
    if (s) {
        if (auto neg = s->negative_ttl())
            return capped(*neg, p.max_negative);
    }
    return std::min(p.default_negative, p.max_negative);
}

std::optional<message_summary> summary_of(std::span<const std::uint8_t> answer) {
    if (answer.empty())
        return std::nullopt;
    auto s = summarize(answer);
    if (!s)
        return std::nullopt;
    return *s;
}

std::chrono::seconds failure_ttl(std::error_code ec, const ttl_policy& p) {
    // A cancelled lookup says nothing about the domain.
    return ec == errc::cancelled ? std::chrono::seconds(0) : p.temporary;
}

bool name_octet(char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

}  // namespace

void order_exchangers(std::vector<mx_host>& hosts, const random_source& random) {
    std::stable_sort(hosts.begin(), hosts.end(), [](const mx_host& a, const mx_host& b) {
        return a.preference < b.preference;
    });
    std::size_t begin = 0;
    while (begin < hosts.size()) {
        std::size_t end = begin + 1;
        while (end < hosts.size() && hosts[end].preference == hosts[begin].preference)
            ++end;
        // Fisher-Yates over [begin, end).
        for (std::size_t i = end - 1; i > begin; --i) {
            const std::size_t j = begin + uniform_below(random, i - begin + 1);
            std::swap(hosts[i], hosts[j]);
        }
        begin = end;
    }
}

std::error_code from_ares_status(int status) noexcept {
    switch (status) {
        case ARES_SUCCESS:
            return {};
        case ARES_ENOTFOUND:
            return errc::nxdomain;
        case ARES_ESERVFAIL:
        case ARES_EREFUSED:
        case ARES_EFORMERR:
        case ARES_ENOTIMP:
            return errc::server_failure;
        case ARES_ETIMEOUT:
            return errc::timeout;
        case ARES_ECONNREFUSED:
            return errc::connection_refused;
        case ARES_EBADRESP:
        case ARES_EOF:
            return errc::bad_response;
        case ARES_EBADNAME:
            return errc::bad_domain;
        case ARES_EDESTRUCTION:
        case ARES_ECANCELLED:
            return errc::cancelled;
        default:  // ARES_ENODATA is handled by the callers; ENOMEM and the like
            return errc::internal;
    }
}

std::optional<result<route>> address_literal_route(std::string_view domain, std::uint16_t port,
                                                   clock::time_point now) {
    if (domain.size() < 2 || domain.front() != '[' || domain.back() != ']')
        return std::nullopt;
    std::string_view inner = domain.substr(1, domain.size() - 2);
    std::string text;
    if (inner.size() > 5 && (inner.substr(0, 5) == "IPv6:" || inner.substr(0, 5) == "ipv6:" ||
                             inner.substr(0, 5) == "IPV6:")) {
        text = fmt::format("[{}]:{}", inner.substr(5), port);
    } else if (inner.find(':') == std::string_view::npos) {
        text = fmt::format("{}:{}", inner, port);
    } else {
        return result<route>(errc::bad_domain);  // IPv6 needs its "IPv6:" tag
    }
    auto ep = core::parse_endpoint(text);
    if (!ep)
        return result<route>(errc::bad_domain);
    route r;
    r.domain = std::string(domain);
    r.implicit = true;
    r.hosts.push_back(mx_host{std::string(domain), 0, {*ep}});
    r.expires = now + std::chrono::hours(24);
    return result<route>(std::move(r));
}

route loopback_route(std::string_view name, std::uint16_t port, clock::time_point now) {
    route r;
    r.domain = std::string(name);
    r.implicit = true;
    mx_host h{std::string(name), 0, {}};
    h.addresses.push_back(*core::parse_endpoint(fmt::format("127.0.0.1:{}", port)));
    h.addresses.push_back(*core::parse_endpoint(fmt::format("[::1]:{}", port)));
    r.hosts.push_back(std::move(h));
    r.expires = now + std::chrono::hours(24);
    return r;
}

result<std::string> normalize_domain(std::string_view domain) {
    if (!domain.empty() && domain.back() == '.')
        domain.remove_suffix(1);
    if (domain.empty() || domain.size() > 253)
        return errc::bad_domain;
    std::string out;
    out.reserve(domain.size());
    std::size_t label = 0;
    for (char c : domain) {
        c = core::to_lower_ascii(c);
        if (c == '.') {
            if (label == 0)
                return errc::bad_domain;
            label = 0;
        } else {
            if (!name_octet(c) || ++label > 63)
                return errc::bad_domain;
        }
        out.push_back(c);
    }
    if (label == 0)
        return errc::bad_domain;
    return out;
}

mx_step interpret_mx(std::string_view domain, int ares_status, std::span<const std::uint8_t> answer,
                     const ttl_policy& policy, const random_source& random, std::size_t max_hosts) {
    mx_step step;
    const auto summary = summary_of(answer);
    if (ares_status == ARES_SUCCESS) {
        if (!summary) {
            step.error = errc::bad_response;
            step.ttl = policy.temporary;
            return step;
        }
        ares_mx_reply* replies = nullptr;
        const int parsed =
            ares_parse_mx_reply(answer.data(), static_cast<int>(answer.size()), &replies);
        if (parsed == ARES_SUCCESS) {
            std::size_t count = 0;
            bool null_mx = false;
            for (ares_mx_reply* r = replies; r != nullptr; r = r->next) {
                ++count;
                if (r->host == nullptr || r->host[0] == '\0' || std::strcmp(r->host, ".") == 0) {
                    null_mx = true;  // "." is never a host to try
                    continue;
                }
                auto name = normalize_domain(r->host);
                if (!name)
                    continue;  // a name we could not query anyway
                step.hosts.push_back(mx_host{std::move(*name), r->priority, {}});
            }
            ares_free_data(replies);
            step.ttl = capped(summary->min_answer_ttl.value_or(0), policy.max_positive);
            if (null_mx && count == 1) {
                step.error = errc::null_mx;
                step.ttl = std::min(step.ttl, policy.max_negative);
                step.hosts.clear();
                return step;
            }
            if (!step.hosts.empty()) {
                order_exchangers(step.hosts, random);
                if (step.hosts.size() > max_hosts)
                    step.hosts.resize(max_hosts);
                return step;
            }
            if (null_mx) {  // several records, all of them "." or unusable
                step.error = errc::null_mx;
                step.ttl = std::min(step.ttl, policy.max_negative);
                return step;
            }
            step.error = errc::bad_response;
            step.ttl = policy.temporary;
            return step;
        }
        if (parsed != ARES_ENODATA) {  // ENODATA: only a CNAME chain, no MX: implicit
            step.error = errc::bad_response;
            step.ttl = policy.temporary;
            return step;
        }
        ares_status = ARES_ENODATA;
    }
    if (ares_status == ARES_ENODATA) {
        step.implicit = true;
        step.hosts.push_back(mx_host{std::string(domain), 0, {}});
        step.ttl = negative_ttl(summary, policy);
        return step;
    }
    step.error = from_ares_status(ares_status);
    step.ttl = step.error == errc::nxdomain ? negative_ttl(summary, policy)
                                            : failure_ttl(step.error, policy);
    return step;
}

address_step interpret_address(int family, int ares_status, std::span<const std::uint8_t> answer,
                               std::uint16_t port, const ttl_policy& policy,
                               std::size_t max_addresses) {
    address_step step;
    const auto summary = summary_of(answer);
    if (ares_status == ARES_SUCCESS) {
        constexpr int slots = 32;
        const int wanted = static_cast<int>(std::min<std::size_t>(max_addresses, slots));
        int n = wanted;
        int parsed;
        std::uint32_t min_ttl = UINT32_MAX;
        if (family == AF_INET) {
            ares_addrttl ttls[slots];
            parsed = ares_parse_a_reply(answer.data(), static_cast<int>(answer.size()), nullptr,
                                        ttls, &n);
            for (int i = 0; parsed == ARES_SUCCESS && i < n; ++i) {
                core::endpoint ep;
                auto* sin = reinterpret_cast<sockaddr_in*>(&ep.storage);
                sin->sin_family = AF_INET;
                sin->sin_port = htons(port);
                sin->sin_addr = ttls[i].ipaddr;
                ep.len = sizeof(sockaddr_in);
                step.addresses.push_back(ep);
                min_ttl = std::min(min_ttl, clamp_ttl(static_cast<std::uint32_t>(ttls[i].ttl)));
            }
        } else {
            ares_addr6ttl ttls[slots];
            parsed = ares_parse_aaaa_reply(answer.data(), static_cast<int>(answer.size()), nullptr,
                                           ttls, &n);
            for (int i = 0; parsed == ARES_SUCCESS && i < n; ++i) {
                core::endpoint ep;
                auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ep.storage);
                sin6->sin6_family = AF_INET6;
                sin6->sin6_port = htons(port);
                std::memcpy(&sin6->sin6_addr, &ttls[i].ip6addr, sizeof(sin6->sin6_addr));
                ep.len = sizeof(sockaddr_in6);
                step.addresses.push_back(ep);
                min_ttl = std::min(min_ttl, clamp_ttl(static_cast<std::uint32_t>(ttls[i].ttl)));
            }
        }
        if (parsed == ARES_SUCCESS && !step.addresses.empty() && summary) {
            // The answer's smallest TTL also covers the CNAMEs leading to the addresses.
            min_ttl = std::min(min_ttl, summary->min_answer_ttl.value_or(min_ttl));
            step.ttl = capped(min_ttl, policy.max_positive);
            return step;
        }
        step.addresses.clear();
        if (parsed != ARES_SUCCESS && parsed != ARES_ENODATA) {
            step.error = errc::bad_response;
            step.ttl = policy.temporary;
            return step;
        }
        if (!summary) {
            step.error = errc::bad_response;
            step.ttl = policy.temporary;
            return step;
        }
        ares_status = ARES_ENODATA;  // a CNAME chain without addresses of this family
    }
    if (ares_status == ARES_ENODATA || ares_status == ARES_ENOTFOUND) {
        step.name_exists = ares_status == ARES_ENODATA;
        step.ttl = negative_ttl(summary, policy);
        return step;
    }
    step.error = from_ares_status(ares_status);
    step.ttl = failure_ttl(step.error, policy);
    return step;
}

result<route> assemble_route(std::string_view domain, mx_step mx, std::span<address_step> v6,
                             std::span<address_step> v4, const ttl_policy& policy,
                             clock::time_point now, std::chrono::seconds& ttl) {
    ttl = mx.ttl;
    if (mx.error)
        return failure(mx.error);
    if (v6.size() != mx.hosts.size() || v4.size() != mx.hosts.size()) {
        ttl = std::chrono::seconds(0);
        return errc::internal;
    }
    route r;
    r.domain = std::string(domain);
    r.implicit = mx.implicit;
    std::error_code first_failure;
    bool any_name = false;
    std::chrono::seconds used_ttl = mx.ttl;
    std::chrono::seconds negative = mx.ttl;
    for (std::size_t i = 0; i < mx.hosts.size(); ++i) {
        for (const address_step* step : {&v4[i], &v6[i]}) {
            if (step->error && !first_failure)
                first_failure = step->error;
            any_name = any_name || step->name_exists;
        }
        negative = std::min({negative, v4[i].ttl, v6[i].ttl});
        if (v4[i].addresses.empty() && v6[i].addresses.empty())
            continue;  // a host that does not resolve is skipped
        mx_host host = std::move(mx.hosts[i]);
        host.addresses = std::move(v4[i].addresses);
        host.addresses.insert(host.addresses.end(), v6[i].addresses.begin(), v6[i].addresses.end());
        used_ttl = std::min({used_ttl, v4[i].ttl, v6[i].ttl});
        r.hosts.push_back(std::move(host));
    }
    if (!r.hosts.empty()) {
        ttl = used_ttl;
        r.expires = now + ttl;
        return r;
    }
    if (first_failure) {
        ttl = failure_ttl(first_failure, policy);
        return failure(first_failure);
    }
    if (mx.implicit) {
        ttl = negative;
        return any_name ? errc::no_address : errc::nxdomain;
    }
    ttl = policy.temporary;
    return errc::no_reachable_mx;
}

}  // namespace ringmail::dns
