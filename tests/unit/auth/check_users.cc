// Test helper: check_users USERS_FILE USER, password on stdin (first line). Loads the file with
// auth::load_users_file and verifies; exit 0 when the password matches, 1 when it does not,
// 2 when the file does not load (the error goes to stderr).
#include "ringmail/auth/credential_store.h"

#include <cstdio>
#include <iostream>
#include <string>

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fputs("usage: check_users USERS_FILE USER < password\n", stderr);
        return 2;
    }
    const ringmail::auth::loaded_users l = ringmail::auth::load_users_file(argv[1]);
    if (!l.ok()) {
        std::fprintf(stderr, "%s\n", l.error.c_str());
        return 2;
    }
    std::string password;
    std::getline(std::cin, password);
    return l.store->verify(argv[2], password) == ringmail::auth::verdict::ok ? 0 : 1;
}
