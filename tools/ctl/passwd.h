// `ringmailctl passwd`: turns a password read from standard input into a users-file line.
//
// Runs once in a short-lived process (no shard). Failures are one message on stderr and an
// exit code (2 for a bad user name, 1 for anything else); nothing is ever echoed.
#pragma once

#include "ringmail/auth/credential_store.h"

#include <cstdio>
#include <string>

namespace ringmail::ctl {

// Reads the first line of `in` (CR/LF stripped). With a terminal on `in`, echo is turned off
// while reading and a prompt goes to stderr. nullopt at end of input before any byte.
std::optional<std::string> read_password_line(std::FILE* in);

// Prints "USER:HASH\n" on stdout; returns the process exit code.
int run_passwd(const std::string& user, auth::scheme s, std::FILE* in);

}  // namespace ringmail::ctl
