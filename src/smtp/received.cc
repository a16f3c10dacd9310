#include "ringmail/smtp/received.h"

#include "ringmail/core/date.h"

#include <fmt/format.h>

#include <ctime>

namespace ringmail::smtp {

namespace {

// The HELO name lands in a header: keep printable octets that cannot end the token,
// open/close a comment or start a new field.
std::string sanitise_helo(std::string_view helo) {
    if (helo.empty())
        return "unknown";
    std::string out;
    out.reserve(helo.size());
    for (unsigned char c : helo) {
        bool ok = c > ' ' && c != 127 && c != '(' && c != ')' && c != '\\' && c != ';';
        out.push_back(ok ? static_cast<char>(c) : '?');
    }
    return out;
}

// TLS names come from our TLS library, but they still land in a comment: keep only the
// characters TLS version and cipher suite names use.
std::string sanitise_token(std::string_view t) {
    std::string out;
    out.reserve(t.size());
    for (unsigned char c : t) {
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-' || c == '+' || c == '/';
        out.push_back(ok ? static_cast<char>(c) : '?');
    }
    return out;
}

}  // namespace

std::string format_received(const mail::envelope& env, std::string_view hostname,
                            std::string_view queue_id, unsigned shard, std::int64_t now_unix) {
    std::string out;
    out.reserve(256);
    out.append("Received: from ").append(sanitise_helo(env.helo_name)).append(" ([");
    if (env.client_address.find(':') != std::string::npos)
        out.append("IPv6:");
    out.append(env.client_address).append("])\r\n");
    if (!env.tls_protocol.empty()) {
        out.append("\t(using ").append(sanitise_token(env.tls_protocol));
        if (!env.tls_cipher.empty())
            out.append(" with cipher ").append(sanitise_token(env.tls_cipher));
        out.append(")\r\n");
    }
    std::string_view with = env.protocol.empty() ? std::string_view("SMTP") : env.protocol;
    out.append(fmt::format("\tby {} (ringmail) with {} id {} (shard {})", hostname, with, queue_id,
                           shard));
    if (env.rcpt_to.size() == 1) {
        out.append("\r\n\tfor <").append(env.rcpt_to.front()).append(">; ");
    } else {
        out.append(";\r\n\t");
    }
    out.append(core::rfc5322_date(now_unix)).append("\r\n");
    return out;
}

}  // namespace ringmail::smtp
