#include "ringmail/delivery/bounce.h"

#include "ringmail/mail/envelope.h"

#include <fmt/format.h>

#include <string>

namespace ringmail::delivery {

result<spool::queue_id> spool_dsn(spool::spool& original, spool::spool& into,
                                  const queue::bounce_request& b, std::string_view reporting_mta,
                                  std::int64_t now_unix) {
    auto orig = original.read(b.id);
    if (!orig)
        return failure(orig.error());
    std::string token = fmt::format("{}.{}", spool::format_queue_id(b.id), now_unix);
    queue::dsn_request req;
    req.reporting_mta = reporting_mta;
    req.original_sender = b.sender;
    req.arrival_unix = b.arrival;
    req.now_unix = now_unix;
    req.rcpts = b.rcpts;
    req.original_added_headers = orig->added_headers;
    req.original_message = orig->body;
    req.message_id_token = token;
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
    return into.finish(*w, {}, 0);
}

}  // namespace ringmail::delivery
