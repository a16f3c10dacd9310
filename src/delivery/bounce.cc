#include "ringmail/delivery/bounce.h"

#include "ringmail/mail/envelope.h"
#include "ringmail/smtp/dsn_params.h"

#include <fmt/format.h>

#include <string>
#include <vector>

namespace ringmail::delivery {

namespace {

std::uint8_t notify_kind(queue::dsn_action a) noexcept {
    switch (a) {
        case queue::dsn_action::delayed:
            return mail::notify::delay;
        case queue::dsn_action::relayed:
            return mail::notify::success;
        case queue::dsn_action::failed:
            break;
    }
    return mail::notify::failure;
}

// The DSN parameters of `address` in the original envelope (the first recipient of that name).
const mail::rcpt_dsn& params_of(const mail::envelope& env, std::string_view address) {
    for (std::size_t i = 0; i < env.rcpt_to.size(); ++i) {
        if (env.rcpt_to[i] == address)
            return env.dsn_of(i);
    }
    return env.dsn_of(env.rcpt_to.size());
}

// "rfc822;xtext" -> "rfc822;decoded" ("" when absent or undecodable: validated at RCPT).
std::string original_recipient(std::string_view orcpt) {
    const std::size_t semi = orcpt.find(';');
    if (semi == std::string_view::npos)
        return {};
    auto decoded = smtp::xtext_decode(orcpt.substr(semi + 1));
    if (!decoded)
        return {};
    return std::string(orcpt.substr(0, semi + 1)) + *decoded;
}

}  // namespace

result<std::optional<spool::queue_id>> spool_dsn(spool::spool& original, spool::spool& into,
                                                 const queue::bounce_request& b,
                                                 std::string_view reporting_mta,
                                                 std::int64_t now_unix, std::uint64_t token,
                                                 std::span<const std::string> category_names) {
    auto orig = original.read(b.id);
    if (!orig)
        return failure(orig.error());
    std::vector<queue::failed_recipient> rcpts;
    for (const queue::failed_recipient& r : b.rcpts) {
        const mail::rcpt_dsn& d = params_of(orig->env, r.address);
        if (!mail::wants_notice(d, notify_kind(r.action)))
            continue;  // NOTIFY=NEVER, or a list without this kind
        rcpts.push_back(r);
        rcpts.back().original_recipient = original_recipient(d.orcpt);
    }
    if (rcpts.empty())
        return std::optional<spool::queue_id>();
    std::string envid;
    if (!orig->env.envid.empty())
        envid = smtp::xtext_decode(orig->env.envid).value_or(std::string());
    std::string id_token = fmt::format("{}.{}", spool::format_queue_id(b.id), now_unix);
    queue::dsn_request req;
    req.reporting_mta = reporting_mta;
    req.original_sender = b.sender;
    req.arrival_unix = b.arrival;
    req.now_unix = now_unix;
    req.rcpts = rcpts;
    req.return_full = orig->env.ret == mail::dsn_ret::full;
    req.original_envelope_id = envid;
    req.original_added_headers = orig->added_headers;
    req.original_message = orig->body;
    req.message_id_token = id_token;
    req.category_names = category_names;
    std::string text = queue::build_dsn(req);

    mail::envelope env;
    env.mail_from = "";
    env.rcpt_to.push_back(b.sender);
    env.smtputf8 = orig->env.smtputf8;
    env.body = orig->env.body == mail::body_type::seven_bit ? mail::body_type::seven_bit
                                                            : mail::body_type::eight_bit_mime;
    env.helo_name = std::string(reporting_mta);
    env.protocol = "local";
    env.arrival_time = now_unix;
    auto w = into.begin(env);
    if (!w)
        return failure(w.error());
    if (auto ok = into.append(*w, text); !ok) {
        into.abort(*w);
        return failure(ok.error());
    }
    auto id = into.finish(*w, {}, token);
    if (!id)
        return failure(id.error());
    return std::optional<spool::queue_id>(*id);
}

}  // namespace ringmail::delivery
