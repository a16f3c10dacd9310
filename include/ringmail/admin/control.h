// What the admin thread and the shards say to each other: the admin API's questions (the
// queue, one message) and orders (suspensions changed, flush, bounce), one message per shard,
// each answered by one reply with the same token; and, the other way, what a shard's shaping
// rule fired (rule_effect: a suspension or `set` for the store, never answered).
//
// They travel through an admin_mailbox (a core::mailbox over shards + 1 participants: the
// admin thread is participant `shards`), so the admin thread never reads a shard's state: a
// shard answers from its own thread between two loop iterations. Bounded: a request goes out
// only when the admin thread has room for its replies (at most one request in flight per
// connection per shard, 64 connections, rings of 256); a full ring answers 503.
#pragma once

#include "ringmail/core/mailbox.h"
#include "ringmail/queue/suspensions.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ringmail::admin {

enum class request_kind : std::uint8_t {
    destinations,  // the shard's destination queues
    message,       // what the shard knows of one queue id
    suspensions,   // a new set of suspensions is in force, `lifted` ended now (no reply data)
    flush,         // deferred jobs of `key` ("" = all) are ready now
    bounce,        // fail the queued jobs of `key`, or of `queue_id` when key is ""
    rule_effect,   // shard -> admin: `effect` for the store (not a reply, none expected)
};

struct destination_row {
    std::string key;
    std::uint64_t ready = 0, deferred = 0, in_flight = 0, connections = 0, recipients = 0;
    std::int64_t next_attempt_unix = 0;    // 0 = none deferred
    std::int64_t oldest_arrival_unix = 0;  // 0 = nothing queued
    std::string last_reply;
};

struct recipient_row {
    std::string address;
    std::string state;  // pending, delivered, bounced, expired
};

// One message as its origin shard knows it (found), plus where its jobs wait (every shard).
struct message_detail {
    bool found = false;
    std::string sender;
    std::int64_t arrival_unix = 0;
    std::uint64_t size = 0;
    std::uint32_t attempts = 0;
    std::vector<recipient_row> recipients;
    struct job_row {
        std::string destination;
        std::vector<std::uint16_t> rcpts;
        std::uint32_t attempts = 0;
        std::int64_t next_attempt_unix = 0;
        std::string last_reply;
    };
    std::vector<job_row> jobs;
};

struct control_message {
    std::uint64_t token = 0;  // the admin connection's request, echoed by the reply
    bool reply = false;
    request_kind kind = request_kind::destinations;
    // Request.
    std::string key;
    std::uint64_t queue_id = 0;
    std::string reason;
    bool ages = false;  // destinations: also their oldest jobs' ages (a walk over the jobs)
    std::shared_ptr<const queue::suspensions> suspensions;
    std::vector<queue::suspension> lifted;  // suspensions: resumed by an operator
    queue::suspension effect;               // rule_effect
    // Reply.
    std::vector<destination_row> destinations;
    message_detail message;
    std::uint64_t affected = 0;  // jobs flushed, recipients bounced
};

using admin_mailbox = core::mailbox<control_message, 256>;

// Room a shard keeps in its ring to the admin thread for replies: rule_effect messages use the
// ring only while more than this is free (a request is answered even when rules fire).
inline constexpr std::size_t reply_reserve = 64 + 2;

}  // namespace ringmail::admin
