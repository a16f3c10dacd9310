// What the shards' delivery engines send each other, and the message they all read: a
// scheduler message (queue/handoff.h) and, with a job hand-off, a pointer to the message the
// job names — never its bytes.
//
// A message_view is immutable once built and shared (shared_ptr) by the jobs of the message on
// every shard that holds one. Lifetime rule: its views into the origin spool's read-only
// mapping stay valid until the origin journals the message done, which it does only after every
// recipient's final notice came back (after the last transaction that read the bytes); the
// spools are destroyed only after every shard thread has been joined.
#pragma once

#include "ringmail/core/mailbox.h"
#include "ringmail/mail/envelope.h"
#include "ringmail/queue/handoff.h"

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace ringmail::delivery {

struct message_view {
    std::uint64_t id = 0;  // spool queue id
    std::string mail_from;
    std::vector<std::string> rcpts;  // every recipient of the message (jobs hold indexes)
    std::string_view added_headers;
    std::string_view body;
    bool eight_bit = false;
    bool smtputf8 = false;
    std::int64_t arrival = 0;
    std::string message_id;  // for the delivery log
    // DSN (RFC 3461), passed on to a next hop that offers DSN. rcpt_dsn: empty or parallel to
    // rcpts.
    mail::dsn_ret ret = mail::dsn_ret::unspecified;
    std::string envid;
    std::vector<mail::rcpt_dsn> rcpt_dsn;
};

struct shard_message {
    queue::shard_message msg;
    std::shared_ptr<const message_view> view;  // with a job_handoff
};

using mailbox = core::mailbox<shard_message, 1024>;

}  // namespace ringmail::delivery
