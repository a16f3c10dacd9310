// ringmail-blast's command line: what to send, where, how fast, and how to report it.
//
// Parsed once on the main thread before any shard starts; the shards read the result only.
// Bad input is a usage error (exit status 2) with one message naming the option.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace ringmail::blast {

struct options {
    std::string target_host;  // name or IP literal (IPv6 without brackets)
    std::uint16_t target_port = 0;
    std::string target_text;           // as given
    unsigned connections = 10;         // total, spread over the shards
    unsigned shards = 0;               // 0: one per online CPU, at most one per connection
    std::uint64_t messages = 0;        // 0: unlimited (a --duration run)
    std::chrono::seconds duration{0};  // 0: until --messages are done
    double rate = 0;  // messages/s in total; 0: closed loop (as fast as replies come back)
    std::size_t size = 1024;
    std::string message_file;
    unsigned recipients = 1;
    std::uint32_t per_connection = 0;  // transactions per connection; 0: unlimited
    std::string from = "blast@ringmail-blast.test";
    std::string to = "user{n}@blast.test";
    std::uint64_t domains = 0;  // the recipients' {n} is taken modulo this; 0: no modulo
    std::string helo = "ringmail-blast.test";
    bool pipelining = false;
    bool json = false;
    bool allow_errors = false;
    bool progress = true;              // only shown when stderr is a terminal anyway
    std::chrono::seconds timeout{30};  // connect and every reply
    bool starttls = false;             // STARTTLS required, certificates not verified
    bool auth = false;                 // AUTH PLAIN with auth_user / auth_password
    std::string auth_user;
    std::string auth_password;
};

enum class parse_status { run, exit_ok, usage_error };

struct parse_outcome {
    parse_status status = parse_status::run;
    options opts;
    std::string message;  // for exit_ok (help, version) on stdout, for usage_error on stderr
};

parse_outcome parse_command_line(int argc, const char* const* argv);

}  // namespace ringmail::blast
