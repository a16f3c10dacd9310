// origin_ledger: notices in, journal actions and DSN decisions out.
#include "ringmail/delivery/origin_ledger.h"

#include "ringmail/queue/errc.h"

#include <gtest/gtest.h>

namespace ringmail::delivery {
namespace {

using queue::rcpt_status;

ledger_message msg(spool::queue_id id, std::string sender, std::size_t rcpts) {
    ledger_message m;
    m.id = id;
    m.sender = std::move(sender);
    m.arrival = 1000;
    for (std::size_t i = 0; i < rcpts; ++i)
        m.rcpts.push_back("r" + std::to_string(i) + "@example.test");
    return m;
}

queue::attempt_reply reply(int code, std::string enhanced, std::string text) {
    return queue::attempt_reply{.code = code,
                                .enhanced = std::move(enhanced),
                                .text = std::move(text),
                                .remote_mta = "mx.example.test"};
}

struct item {
    std::uint16_t rcpt;
    rcpt_status status;
    std::optional<queue::attempt_reply> rep;
};

queue::job_notice notice(spool::queue_id id, std::vector<item> items, std::uint32_t attempts = 1,
                         std::int64_t next = 0) {
    queue::job_notice n;
    n.queue_id = id;
    n.attempts = attempts;
    n.next_attempt_unix = next;
    for (auto& it : items) {
        n.status.push_back(it.status);
        n.rcpts.push_back(it.rcpt);
        if (it.rep) {
            if (!n.detail)
                n.detail = std::make_unique<queue::notice_detail>();
            n.detail->replies.emplace_back(it.rcpt, *it.rep);
        }
    }
    return n;
}

TEST(OriginLedger, AllDeliveredIsDoneWithoutBounce) {
    origin_ledger l;
    ASSERT_TRUE(l.add(msg(1, "s@a.test", 2)));
    auto a = l.apply(notice(1, {{0, rcpt_status::delivered, {}}}));
    EXPECT_FALSE(a.done);
    EXPECT_FALSE(a.retry);  // nothing deferred in this notice
    ASSERT_EQ(a.outcomes.size(), 1u);
    EXPECT_EQ(a.outcomes[0].second, spool::outcome::delivered);
    a = l.apply(notice(1, {{1, rcpt_status::delivered, {}}}));
    EXPECT_TRUE(a.done);
    EXPECT_FALSE(a.bounce);
    EXPECT_EQ(l.size(), 0u);
}

TEST(OriginLedger, OneDsnListsEveryFailureWhenTheLastRecipientIsFinal) {
    origin_ledger l;
    ASSERT_TRUE(l.add(msg(7, "s@a.test", 3)));
    // Domain one: r0 fails for good.
    auto a = l.apply(notice(7, {{0, rcpt_status::failed, reply(550, "5.1.1", "no such user")}}));
    EXPECT_FALSE(a.done);
    EXPECT_FALSE(a.bounce);
    // Domain two: r1 deferred (retry journaled), r2 delivered.
    a = l.apply(notice(
        7,
        {{1, rcpt_status::deferred, reply(451, "4.3.0", "later")}, {2, rcpt_status::delivered, {}}},
        2, 5000));
    ASSERT_TRUE(a.retry);
    EXPECT_EQ(a.retry->attempts, 2u);
    EXPECT_EQ(a.retry->next_attempt, 5000);
    EXPECT_FALSE(a.bounce);
    // r1 expires: now the DSN, with both failures.
    a = l.apply(notice(7, {{1, rcpt_status::expired, reply(451, "4.3.0", "later")}}, 3));
    EXPECT_TRUE(a.done);
    ASSERT_TRUE(a.bounce);
    EXPECT_EQ(a.bounce->sender, "s@a.test");
    ASSERT_EQ(a.bounce->rcpts.size(), 2u);
    EXPECT_EQ(a.bounce->rcpts[0].address, "r0@example.test");
    EXPECT_EQ(a.bounce->rcpts[0].status, "5.1.1");
    EXPECT_EQ(a.bounce->rcpts[0].diagnostic, "550 5.1.1 no such user");
    EXPECT_EQ(a.bounce->rcpts[0].remote_mta, "mx.example.test");
    EXPECT_FALSE(a.bounce->rcpts[0].expired);
    EXPECT_EQ(a.bounce->rcpts[1].address, "r1@example.test");
    EXPECT_TRUE(a.bounce->rcpts[1].expired);
    // Expiry is 5.4.7 with the last temporary reply as the diagnostic (one rule for every
    // route: the smarthost path said 5.4.7, this ledger said 5.3.0 until the engines merged).
    EXPECT_EQ(a.bounce->rcpts[1].status, "5.4.7");
    EXPECT_EQ(a.bounce->rcpts[1].diagnostic, "451 4.3.0 later");
    ASSERT_EQ(a.outcomes.size(), 1u);
    EXPECT_EQ(a.outcomes[0].second, spool::outcome::expired);
}

TEST(OriginLedger, NullSenderNeverGetsADsn) {
    origin_ledger l;
    ASSERT_TRUE(l.add(msg(3, "", 1)));
    auto a = l.apply(notice(3, {{0, rcpt_status::failed, reply(550, "5.1.1", "no")}}));
    EXPECT_TRUE(a.done);
    EXPECT_FALSE(a.bounce);
    EXPECT_TRUE(a.null_sender_failure);
}

TEST(OriginLedger, DnsFailureStatusIsKept) {
    origin_ledger l;
    ASSERT_TRUE(l.add(msg(4, "s@a.test", 1)));
    auto a = l.apply(notice(4, {{0, rcpt_status::failed, reply(556, "5.1.10", "null MX")}}));
    ASSERT_TRUE(a.bounce);
    EXPECT_EQ(a.bounce->rcpts[0].status, "5.1.10");
}

TEST(OriginLedger, RecoveredMessageKeepsFinalRecipientsAndEarlierFailures) {
    origin_ledger l;
    auto m = msg(5, "s@a.test", 3);
    m.state = {queue::rcpt_state::delivered, queue::rcpt_state::bounced,
               queue::rcpt_state::pending};
    ASSERT_TRUE(l.add(std::move(m)));
    // A duplicate notice for a final recipient is ignored.
    auto a = l.apply(notice(5, {{0, rcpt_status::delivered, {}}}));
    EXPECT_TRUE(a.outcomes.empty());
    EXPECT_EQ(l.stale(), 1u);
    a = l.apply(notice(5, {{2, rcpt_status::delivered, {}}}));
    EXPECT_TRUE(a.done);
    ASSERT_TRUE(a.bounce);
    ASSERT_EQ(a.bounce->rcpts.size(), 1u);
    EXPECT_EQ(a.bounce->rcpts[0].address, "r1@example.test");
}

TEST(OriginLedger, BoundsAndRefusals) {
    origin_ledger l(1);
    auto done = msg(8, "s@a.test", 1);
    done.state = {queue::rcpt_state::delivered};
    EXPECT_EQ(l.add(std::move(done)).error(), make_error_code(queue::errc::no_recipients));
    ASSERT_TRUE(l.add(msg(9, "s@a.test", 1)));
    EXPECT_EQ(l.add(msg(10, "s@a.test", 1)).error(), make_error_code(queue::errc::queue_full));
    auto a = l.apply(notice(42, {{0, rcpt_status::delivered, {}}}));
    EXPECT_TRUE(a.outcomes.empty());
    EXPECT_FALSE(a.done);
}

TEST(OriginLedger, RelayedRecipientsGetANoticeAtOnce) {
    origin_ledger l;
    ASSERT_TRUE(l.add(msg(20, "s@a.test", 2)));
    auto n = notice(20,
                    {{0, rcpt_status::delivered, reply(250, "2.0.0", "queued")},
                     {1, rcpt_status::deferred, reply(451, "4.3.0", "later")}},
                    1, 2000);
    n.detail->relayed.push_back(0);
    auto a = l.apply(n);
    ASSERT_TRUE(a.relayed);
    ASSERT_EQ(a.relayed->rcpts.size(), 1u);
    EXPECT_EQ(a.relayed->rcpts[0].address, "r0@example.test");
    EXPECT_EQ(a.relayed->rcpts[0].action, queue::dsn_action::relayed);
    EXPECT_EQ(a.relayed->rcpts[0].status, "2.0.0");
    EXPECT_EQ(a.relayed->rcpts[0].diagnostic, "250 2.0.0 queued");
    EXPECT_FALSE(a.bounce);
    EXPECT_FALSE(a.delayed) << "no delay warning configured";
}

TEST(OriginLedger, OneDelayNoticePerRecipientPastTheWarning) {
    origin_ledger l(100, std::chrono::seconds(3600));
    ASSERT_TRUE(l.add(msg(21, "s@a.test", 2)));  // arrival 1000
    auto young =
        l.apply(notice(21, {{0, rcpt_status::deferred, reply(451, "4.4.1", "busy")}}, 1, 2000),
                1000 + 3599);
    EXPECT_FALSE(young.delayed);
    auto old = l.apply(notice(21,
                              {{0, rcpt_status::deferred, reply(451, "4.4.1", "busy")},
                               {1, rcpt_status::deferred, reply(421, "", "bye")}},
                              2, 3000),
                       1000 + 3600);
    ASSERT_TRUE(old.delayed);
    ASSERT_EQ(old.delayed->rcpts.size(), 2u);
    EXPECT_EQ(old.delayed->rcpts[0].action, queue::dsn_action::delayed);
    EXPECT_EQ(old.delayed->rcpts[0].status, "4.4.1");
    EXPECT_EQ(old.delayed->rcpts[1].status, "4.0.0");  // no enhanced code: a generic one
    auto again =
        l.apply(notice(21, {{0, rcpt_status::deferred, reply(451, "4.4.1", "busy")}}, 3, 4000),
                1000 + 7200);
    EXPECT_FALSE(again.delayed) << "once per recipient";
    EXPECT_EQ(old.delay_noticed, (std::vector<std::uint32_t>{0, 1})) << "journaled";
}

TEST(OriginLedger, ARecoveredDelayNoticeIsNotSentAgain) {
    origin_ledger l(100, std::chrono::seconds(60));
    auto m = msg(23, "s@a.test", 2);
    m.delay_noticed = {true, false};
    ASSERT_TRUE(l.add(std::move(m)));
    auto a = l.apply(notice(23,
                            {{0, rcpt_status::deferred, reply(451, "4.4.1", "busy")},
                             {1, rcpt_status::deferred, reply(451, "4.4.1", "busy")}},
                            3, 9000),
                     5000);
    ASSERT_TRUE(a.delayed);
    ASSERT_EQ(a.delayed->rcpts.size(), 1u);
    EXPECT_EQ(a.delayed->rcpts[0].address, "r1@example.test");
}

TEST(OriginLedger, NoNoticesForTheNullSender) {
    origin_ledger l(100, std::chrono::seconds(1));
    ASSERT_TRUE(l.add(msg(22, "", 2)));
    auto n = notice(22,
                    {{0, rcpt_status::delivered, reply(250, "2.0.0", "ok")},
                     {1, rcpt_status::deferred, reply(451, "4.4.1", "busy")}},
                    1, 2000);
    n.detail->relayed.push_back(0);
    auto a = l.apply(n, 5000);
    EXPECT_FALSE(a.relayed);
    EXPECT_FALSE(a.delayed);
}

}  // namespace
}  // namespace ringmail::delivery
