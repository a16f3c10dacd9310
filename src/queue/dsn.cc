#include "ringmail/queue/dsn.h"

#include "ringmail/core/date.h"
#include "ringmail/core/panic.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>

namespace ringmail::queue {

namespace {

constexpr std::size_t max_field_text = 900;  // keeps every generated line under 998 octets

// One generated line, CRLF-terminated and dot-stuffed (the DSN travels in transmission form).
void line(std::string& out, std::string_view text) {
    if (!text.empty() && text[0] == '.')
        out += '.';
    out.append(text);
    out += "\r\n";
}

// Peer-supplied text (replies, host names) inside our own lines: no line breaks, no controls,
// ASCII only (message/delivery-status is 7-bit), bounded.
std::string clean(std::string_view s) {
    std::string out;
    out.reserve(std::min(s.size(), max_field_text));
    for (char c : s) {
        if (out.size() >= max_field_text)
            break;
        auto u = static_cast<unsigned char>(c);
        out += (u < 0x20 || u >= 0x7f) ? (u == '\t' ? ' ' : (u >= 0x80 ? '?' : ' ')) : c;
    }
    return out;
}

bool ascii(std::string_view s) {
    for (char c : s) {
        if (static_cast<unsigned char>(c) >= 0x80)
            return false;
    }
    return true;
}

// Address with its RFC 3464 / RFC 6533 address type.
std::string typed_address(std::string_view a) {
    std::string bounded(a.substr(0, max_field_text));
    for (char& c : bounded) {
        if (c == '\r' || c == '\n')
            c = ' ';
    }
    return (ascii(bounded) ? "rfc822; " : "utf-8; ") + bounded;
}

// The header block of the failed message: ringmail's own lines, then the stored message's
// headers up to the first empty line; cut at a line end to stay within `limit`.
std::string header_block(std::string_view added, std::string_view message, std::size_t limit) {
    std::string_view headers = message;
    if (message.starts_with("\r\n")) {
        headers = {};
    } else if (std::size_t end = message.find("\r\n\r\n"); end != std::string_view::npos) {
        headers = message.substr(0, end + 2);
    }
    std::string block;
    block.reserve(std::min(added.size() + headers.size(), limit));
    for (std::string_view part : {added, headers}) {
        std::size_t room = limit > block.size() ? limit - block.size() : 0;
        if (part.size() <= room) {
            block.append(part);
            continue;
        }
        std::size_t cut = part.substr(0, room).rfind("\r\n");
        if (cut != std::string_view::npos)
            block.append(part.substr(0, cut + 2));
        break;
    }
    if (!block.empty() && !block.ends_with("\r\n"))
        block += "\r\n";
    return block;
}

}  // namespace

std::string build_dsn(const dsn_request& req) {
    if (req.original_sender.empty()) {
        core::invariant_broken("DSN requested for a null sender");
    }
    std::string host = clean(req.reporting_mta);
    std::string token = clean(req.message_id_token);
    std::string headers =
        header_block(req.original_added_headers, req.original_message, req.max_header_bytes);
    // The boundary must not occur in the returned headers (the only text we do not write).
    std::string boundary;
    for (unsigned n = 0;; ++n) {
        boundary = "=_ringmail_" + token + "_" + std::to_string(n);
        if (headers.find("--" + boundary) == std::string::npos)
            break;
    }

    // What comes back: the headers (text/rfc822-headers), or with RET=FULL the whole message
    // (message/rfc822), already in transmission form.
    std::string returned = headers;
    if (req.return_full) {
        returned.assign(req.original_added_headers);
        returned.append(req.original_message);
        if (!returned.empty() && !returned.ends_with("\r\n"))
            returned += "\r\n";
        for (unsigned n = 0;; ++n) {
            boundary = "=_ringmail_" + token + "_" + std::to_string(n);
            if (returned.find("--" + boundary) == std::string::npos)
                break;
        }
    }
    const dsn_action action = req.rcpts.empty() ? dsn_action::failed : req.rcpts.front().action;
    for (const failed_recipient& r : req.rcpts) {
        if (r.action != action)
            core::invariant_broken("DSN with recipients of different actions");
    }

    std::string out;
    out.reserve(2048 + returned.size());
    line(out, "From: MAILER-DAEMON@" + host + " (Mail Delivery System)");
    line(out, "To: <" + clean(req.original_sender) + ">");
    switch (action) {
        case dsn_action::failed:
            line(out, "Subject: Undelivered Mail Returned to Sender");
            break;
        case dsn_action::delayed:
            line(out, "Subject: Delayed Mail (still being retried)");
            break;
        case dsn_action::relayed:
            line(out, "Subject: Successful Mail Delivery Report");
            break;
    }
    line(out, "Date: " + core::rfc5322_date(req.now_unix));
    line(out, "Message-ID: <" + token + "@" + host + ">");
    line(out, "Auto-Submitted: auto-replied");
    line(out, "MIME-Version: 1.0");
    line(out, "Content-Type: multipart/report; report-type=delivery-status;");
    line(out, "\tboundary=\"" + boundary + "\"");
    line(out, "");
    line(out, "This is a MIME-encapsulated message.");
    line(out, "");

    line(out, "--" + boundary);
    line(out, "Content-Type: text/plain; charset=us-ascii");
    line(out, "Content-Description: Notification");
    line(out, "");
    line(out, "This is the mail system at " + host + ".");
    line(out, "");
    const char* what =
        req.return_full ? "A copy of it is attached." : "A copy of its headers is attached.";
    switch (action) {
        case dsn_action::failed:
            line(out, "Your message could not be delivered to the recipients listed below.");
            break;
        case dsn_action::delayed:
            line(out, "Your message could not be delivered yet to the recipients listed below.");
            line(out, "It is still being retried; you will hear again only if it fails.");
            break;
        case dsn_action::relayed:
            line(out, "Your message was relayed to the recipients listed below, to a server that");
            line(out, "does not send delivery notifications: this is the last report of it.");
            break;
    }
    line(out, what);
    line(out, "");
    for (const failed_recipient& r : req.rcpts) {
        std::string why;
        switch (action) {
            case dsn_action::failed:
                why = r.expired ? "gave up after the maximum time in the queue"
                                : "refused by the receiving server";
                break;
            case dsn_action::delayed:
                why = "not delivered yet";
                break;
            case dsn_action::relayed:
                why = "relayed";
                break;
        }
        if (!r.diagnostic.empty()) {
            why += (r.remote_mta.empty() ? "" : " " + clean(r.remote_mta)) + ": " +
                   clean(r.diagnostic);
        }
        line(out, "<" + clean(r.address) + ">: " + why);
    }
    line(out, "");

    line(out, "--" + boundary);
    line(out, "Content-Type: message/delivery-status");
    line(out, "Content-Description: Delivery report");
    line(out, "");
    if (!req.original_envelope_id.empty())
        line(out, "Original-Envelope-Id: " + clean(req.original_envelope_id));
    line(out, "Reporting-MTA: dns; " + host);
    line(out, "Arrival-Date: " + core::rfc5322_date(req.arrival_unix));
    for (const failed_recipient& r : req.rcpts) {
        line(out, "");
        if (!r.original_recipient.empty())
            line(out, "Original-Recipient: " + clean(r.original_recipient));
        line(out, "Final-Recipient: " + typed_address(r.address));
        line(out, std::string("Action: ") + (action == dsn_action::failed    ? "failed"
                                             : action == dsn_action::delayed ? "delayed"
                                                                             : "relayed"));
        line(out, "Status: " + clean(r.status));
        if (!r.remote_mta.empty())
            line(out, "Remote-MTA: dns; " + clean(r.remote_mta));
        if (!r.diagnostic.empty())
            line(out, "Diagnostic-Code: smtp; " + clean(r.diagnostic));
        // RFC 3464 2.4: extension fields start with X-.
        if (r.category && action != dsn_action::relayed) {
            const auto i = static_cast<std::size_t>(*r.category);
            std::string_view name = i < req.category_names.size()
                                        ? std::string_view(req.category_names[i])
                                        : predefined_name(*r.category);
            line(out, "X-Ringmail-Category: " + clean(name.empty() ? "Uncategorized" : name));
        }
    }
    line(out, "");

    line(out, "--" + boundary);
    if (req.return_full) {
        line(out, "Content-Type: message/rfc822");
        line(out, "Content-Description: The Message");
    } else {
        line(out, "Content-Type: text/rfc822-headers");
        line(out, action == dsn_action::failed ? "Content-Description: Undelivered Message Headers"
                                               : "Content-Description: Message Headers");
    }
    line(out, "");
    out += returned;  // already transmission form: CRLF lines, dot-stuffed
    line(out, "");
    line(out, "--" + boundary + "--");
    return out;
}

}  // namespace ringmail::queue
