#include "ringmail/queue/bounce_class.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace {

using ringmail::queue::bounce_class;
using ringmail::queue::bounce_classifier;
using ringmail::queue::predefined_name;

bounce_classifier shipped() {
    std::string why;
    std::vector<bounce_classifier::source> f{
        {"bounces.toml", std::string(ringmail::queue::shipped_bounce_rules())}};
    auto c = bounce_classifier::parse(f, why);
    if (!c)
        ADD_FAILURE() << why;
    return std::move(*c);
}

std::optional<bounce_classifier> parse_one(const std::string& text, std::string& why) {
    std::vector<bounce_classifier::source> f{{"rules.toml", text}};
    return bounce_classifier::parse(f, why);
}

struct reply_case {
    int code;
    const char* enhanced;
    const char* text;
    const char* expected;
};

// Replies as mailbox providers and common servers send them (addresses and IPs changed).
const reply_case replies[] = {
    // Gmail
    {550, "5.1.1",
     "The email account that you tried to reach does not exist. Please try\ndouble-checking the "
     "recipient's email address for typos or\nunnecessary spaces. https://support.google.com/mail/"
     "?p=NoSuchUser a1si2.3 - gsmtp",
     "InvalidRecipient"},
    {452, "4.2.2",
     "The email account that you tried to reach is over quota. Please direct\nthe recipient to "
     "https://support.google.com/mail/?p=OverQuotaTemp x5si - gsmtp",
     "QuotaIssues"},
    {550, "5.2.1",
     "The email account that you tried to reach is disabled. Learn more at\n"
     "https://support.google.com/mail/?p=DisabledUser z1si - gsmtp",
     "InactiveMailbox"},
    {421, "4.7.0",
     "[192.0.2.1] Our system has detected an unusual rate of\nunsolicited mail originating from "
     "your IP address. To protect our\nusers from spam, mail sent from your IP address has been "
     "temporarily\nrate limited. - gsmtp",
     "SpamBlock"},
    {550, "5.7.1",
     "[192.0.2.1] Our system has detected that this message is\nlikely unsolicited mail. To reduce "
     "the amount of spam sent to Gmail,\nthis message has been blocked. - gsmtp",
     "SpamContent"},
    {550, "5.7.26",
     "This mail has been blocked because the sender is\nunauthenticated. Gmail requires all "
     "senders "
     "to authenticate with\neither SPF or DKIM. - gsmtp",
     "AuthenticationFailed"},
    {550, "5.7.26",
     "Unauthenticated email from example.com is not accepted due to\ndomain's DMARC policy. - "
     "gsmtp",
     "AuthenticationFailed"},
    {552, "5.7.0",
     "This message was blocked because its content presents a potential\nsecurity issue. - gsmtp",
     "ProhibitedAttachment"},
    {421, "4.7.0", "Try again later, closing connection. (EHLO) - gsmtp", "TransientFailure"},
    {450, "4.2.1", "The user you are trying to contact is receiving mail too quickly. - gsmtp",
     "QuotaIssues"},
    {550, "5.4.5", "Daily user sending quota exceeded. - gsmtp", "QuotaIssues"},
    // Microsoft (Outlook.com, Office 365)
    {550, "5.5.0", "Requested action not taken: mailbox unavailable (S2017062302)",
     "InvalidRecipient"},
    {550, "5.7.1",
     "Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service "
     "provider since part of their network is on our block list (S3150).",
     "SpamBlock"},
    {451, "4.7.650",
     "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation.",
     "SpamBlock"},
    {550, "5.7.606", "Access denied, banned sending IP [192.0.2.1].", "SpamBlock"},
    {550, "5.1.10", "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
     "InvalidRecipient"},
    {550, "5.4.1", "Recipient address rejected: Access denied. AS(201806281)", "InvalidRecipient"},
    {550, "5.7.515",
     "Access denied, sending domain example.com doesn't meet the required authentication level.",
     "AuthenticationFailed"},
    {554, "5.2.2", "mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException",
     "QuotaIssues"},
    {421, "4.3.2",
     "The maximum number of concurrent server connections has exceeded a limit, closing "
     "transmission channel",
     "TransientFailure"},
    // Yahoo / AOL
    {421, "4.7.0",
     "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user "
     "complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
     "SpamBlock"},
    {553, "5.7.2",
     "[TSS09] All messages from 192.0.2.1 will be permanently deferred; Retrying will NOT "
     "succeed. See https://postmaster.yahooinc.com/error-codes",
     "SpamBlock"},
    {554, "5.7.9",
     "Message not accepted for policy reasons.  See https://postmaster.yahooinc.com/error-codes",
     "PolicyRelated"},
    {554, "",
     "delivery error: dd This user doesn't have a yahoo.com account (someone@yahoo.com) [0] - "
     "mta1010.mail.gq1.yahoo.com",
     "InvalidRecipient"},
    {554, "",
     "30 Sorry, your message to someone@aol.com cannot be delivered. This mailbox is disabled "
     "(554.30).",
     "InactiveMailbox"},
    {552, "", "1 Requested mail action aborted, mailbox not found", "InvalidRecipient"},
    // Apple iCloud, Comcast, GMX/Web.de, Mail.ru, Yandex
    {550, "5.1.1", "<someone@icloud.com>: user does not exist", "InvalidRecipient"},
    {554, "5.7.1", "[CS01] Message rejected due to local policy.", "PolicyRelated"},
    {554, "",
     "resimta-po-01v.sys.comcast.net comcast 192.0.2.1 Comcast block for spam. Please see "
     "http://postmaster.comcast.net/smtp-error-codes.php#BL000000",
     "SpamBlock"},
    {550, "5.1.1", "<someone@comcast.net> Not our Customer", "InvalidRecipient"},
    {554, "", "Transaction failed\nReject due to policy restrictions.", "PolicyRelated"},
    {550, "", "Requested action not taken: mailbox unavailable\nReject due to policy restrictions.",
     "InvalidRecipient"},
    {550, "",
     "Message was not accepted -- invalid mailbox.  Local mailbox someone@mail.ru is unavailable: "
     "account is disabled",
     "InactiveMailbox"},
    {550, "",
     "spam message rejected. Please visit http://help.mail.ru/notspam-support/id?c=abc or report "
     "details to abuse@corp.mail.ru. Error code: 1234.",
     "SpamContent"},
    {550, "5.7.1", "No such user!", "InvalidRecipient"},
    {554, "5.7.1", "[2] Message rejected under suspicion of SPAM; https://ya.cc/1IrBc 1234",
     "SpamContent"},
    // Postfix, Exim, common appliances
    {550, "5.1.1",
     "<someone@example.com>: Recipient address rejected: User unknown in virtual "
     "mailbox table",
     "InvalidRecipient"},
    {450, "4.2.0",
     "<someone@example.com>: Recipient address rejected: Greylisted, see "
     "http://postgrey.schweikert.ch/help/example.com.html",
     "TransientFailure"},
    {554, "5.7.1", "<someone@example.com>: Relay access denied", "RelayingIssues"},
    {553, "5.7.1", "<sender@example.net>: Sender address rejected: not owned by user",
     "InvalidSender"},
    {554, "5.7.1", "Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
     "SpamBlock"},
    {450, "4.7.1", "Client host rejected: cannot find your hostname, [192.0.2.1]", "PolicyRelated"},
    {452, "4.5.3", "Error: too many recipients", "TooManyRecipients"},
    {552, "5.3.4", "Error: message file too big", "ContentRelated"},
    {550, "", "Message rejected: virus found (Eicar-Signature)", "VirusRelated"},
    {500, "5.5.2", "Error: bad syntax", "ProtocolErrors"},
    {503, "", "5.5.1 Error: need MAIL command", "ProtocolErrors"},
    {421, "", "Service not available, closing transmission channel", "TransientFailure"},
    {451, "", "Temporary local problem - please try later", "TransientFailure"},
    {550, "5.1.2", "Host unknown", "BadDomain"},
    // The RFC 3463 codes alone
    {550, "5.1.1", "x", "InvalidRecipient"},
    {550, "5.1.2", "x", "BadDomain"},
    {550, "5.1.3", "x", "InvalidRecipient"},
    {550, "5.1.7", "x", "InvalidSender"},
    {550, "5.1.8", "x", "InvalidSender"},
    {550, "5.1.10", "x", "BadDomain"},
    {550, "5.2.1", "x", "InactiveMailbox"},
    {552, "5.2.2", "x", "QuotaIssues"},
    {552, "5.2.3", "x", "ContentRelated"},
    {452, "4.3.1", "x", "QuotaIssues"},
    {421, "4.3.2", "x", "TransientFailure"},
    {554, "5.3.5", "x", "BadConfiguration"},
    {451, "4.4.0", "session failed: 554 5.7.1 go away", "BadConnection"},
    {451, "4.4.1", "x", "NoAnswerFromHost"},
    {451, "4.4.2", "x", "BadConnection"},
    {451, "4.4.3", "x", "DNSFailure"},
    {554, "5.4.4", "x", "RoutingErrors"},
    {451, "4.4.5", "x", "TransientFailure"},
    {554, "5.4.6", "x", "RoutingErrors"},
    {554, "5.4.7", "x", "MessageExpired"},
    {501, "5.5.4", "x", "ProtocolErrors"},
    {452, "4.5.3", "x", "TooManyRecipients"},
    {554, "5.6.0", "x", "ContentRelated"},
    {553, "5.6.7", "x", "ContentRelated"},
    {550, "5.7.1", "x", "PolicyRelated"},
    {535, "5.7.8", "x", "AuthenticationFailed"},
    {530, "5.7.10", "x", "BadConfiguration"},
    {525, "4.7.13", "x", "InactiveMailbox"},
    {551, "5.7.17", "x", "InvalidRecipient"},
    {551, "5.7.18", "x", "BadDomain"},
    {550, "5.7.23", "x", "AuthenticationFailed"},
    {550, "5.7.25", "x", "PolicyRelated"},
    {451, "4.0.0", "x", "TransientFailure"},
    {554, "5.0.0", "x", "Uncategorized"},
    {550, "", "x", "Uncategorized"},
};

TEST(BounceClass, RealReplies) {
    const bounce_classifier c = shipped();
    bounce_classifier::scratch s;
    for (const reply_case& r : replies) {
        const bounce_class got = c.classify(r.code, r.enhanced, r.text, s);
        EXPECT_EQ(c.name(got), r.expected) << s.line;
    }
}

TEST(BounceClass, NamesAreKumoMtas) {
    EXPECT_EQ(predefined_name(bounce_class::invalid_recipient), "InvalidRecipient");
    EXPECT_EQ(predefined_name(bounce_class::dns_failure), "DNSFailure");
    EXPECT_EQ(predefined_name(bounce_class::too_many_recipients), "TooManyRecipients");
    EXPECT_EQ(predefined_name(bounce_class::uncategorized), "Uncategorized");
    EXPECT_EQ(ringmail::queue::predefined_bounce_classes, 29u);
    EXPECT_EQ(ringmail::queue::predefined_class("SpamBlock"), bounce_class::spam_block);
    EXPECT_FALSE(ringmail::queue::predefined_class("spamblock"));  // case-sensitive, as KumoMTA
}

TEST(BounceClass, SingleLineIsKumoMtas) {
    std::string out;
    ringmail::queue::single_line(550, "5.1.1", "first\nsecond\rx", out);
    EXPECT_EQ(out, "550 5.1.1 first\\nsecond\\rx");
    ringmail::queue::single_line(421, "", "busy", out);
    EXPECT_EQ(out, "421 busy");
}

TEST(BounceClass, FileFormat) {
    // Comments, categories in the order written (not sorted), patterns in order, first wins,
    // a user-defined class, literal and basic strings, a multi-line array.
    const std::string text = R"(# a comment
[rules]
# Zeta comes first in the file: it wins over Alpha for "both".
Zeta = ["both", 'z\d+']   # trailing comment
Alpha = [
  "both",     # never reached
  "alpha",
]
QuotaIssues = ['(?i)MAILBOX FULL']
)";
    std::string why;
    auto c = parse_one(text, why);
    ASSERT_TRUE(c) << why;
    bounce_classifier::scratch s;
    EXPECT_EQ(c->name(c->classify_line("550 both", s)), "Zeta");
    EXPECT_EQ(c->name(c->classify_line("550 z12", s)), "Zeta");
    EXPECT_EQ(c->name(c->classify_line("550 alpha", s)), "Alpha");
    EXPECT_EQ(c->name(c->classify_line("552 5.2.2 Mailbox Full", s)), "QuotaIssues");
    EXPECT_EQ(c->classify_line("552 5.2.2 Mailbox Full", s), bounce_class::quota_issues);
    EXPECT_EQ(c->name(c->classify_line("250 ok", s)), "Uncategorized");
    EXPECT_EQ(c->rules(), 5u);
    ASSERT_EQ(c->names().size(), ringmail::queue::predefined_bounce_classes + 2);
    EXPECT_EQ(c->names().back(), "Alpha");
}

TEST(BounceClass, SeveralFilesFirstFileWins) {
    std::vector<bounce_classifier::source> f{
        {"mine.toml", "[rules]\nTransientFailure = ['blacklisted']\n"},
        {"theirs.toml", "[rules]\nSpamBlock = ['blacklisted', 'listed']\n"}};
    std::string why;
    auto c = bounce_classifier::parse(f, why);
    ASSERT_TRUE(c) << why;
    bounce_classifier::scratch s;
    EXPECT_EQ(c->classify_line("550 5.7.1 you are blacklisted", s),
              bounce_class::transient_failure);
    EXPECT_EQ(c->classify_line("550 5.7.1 you are listed", s), bounce_class::spam_block);
}

TEST(BounceClass, BadRegexNamesRuleAndLine) {
    std::string why;
    EXPECT_FALSE(parse_one("[rules]\nSpamBlock = [\n  'fine',\n  'bad(',\n]\n", why));
    EXPECT_NE(why.find("rules.toml:4"), std::string::npos) << why;
    EXPECT_NE(why.find("rules.SpamBlock[1]"), std::string::npos) << why;
    EXPECT_NE(why.find("bad("), std::string::npos) << why;
}

TEST(BounceClass, BadFiles) {
    std::string why;
    EXPECT_FALSE(parse_one("[other]\nx = 1\n", why));
    EXPECT_NE(why.find("no [rules]"), std::string::npos) << why;
    EXPECT_FALSE(parse_one("[rules]\nSpamBlock = 'x'\n", why));
    EXPECT_NE(why.find("rules.toml:2"), std::string::npos) << why;
    EXPECT_FALSE(parse_one("[rules]\nSpamBlock = ['x', 3]\n", why));
    EXPECT_NE(why.find("rules.SpamBlock[1]"), std::string::npos) << why;
    EXPECT_FALSE(parse_one("[rules\n", why));
    EXPECT_NE(why.find("TOML syntax error"), std::string::npos) << why;
    std::string many = "[rules]\n";
    for (int i = 0; i < 40; ++i)
        many += "C" + std::to_string(i) + " = ['x']\n";
    EXPECT_FALSE(parse_one(many, why));
    EXPECT_NE(why.find("more than 64 categories"), std::string::npos) << why;
}

TEST(BounceClass, ShippedFileIsTheInstalledOne) {
    const char* root = std::getenv("RINGMAIL_SOURCE_ROOT");
    if (root == nullptr)
        GTEST_SKIP() << "RINGMAIL_SOURCE_ROOT not set";
    std::vector<std::string> paths{std::string(root) + "/packaging/bounces.toml"};
    std::string why;
    auto c = bounce_classifier::load(paths, why);
    ASSERT_TRUE(c) << why;
    std::ifstream in(paths[0]);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_EQ(text, ringmail::queue::shipped_bounce_rules());
    std::vector<std::string> missing{"/nonexistent/bounces.toml"};
    EXPECT_FALSE(bounce_classifier::load(missing, why));
    EXPECT_NE(why.find("/nonexistent/bounces.toml"), std::string::npos);
}

}  // namespace
