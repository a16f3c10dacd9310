// Test helpers for tls: certificate paths and a memory transport joining two sessions.
#pragma once

#include "ringmail/tls/context.h"
#include "ringmail/tls/credentials.h"
#include "ringmail/tls/session.h"

#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <string>

namespace ringmail::tls::test {

inline std::string data(const char* name) {
    return std::string(RINGMAIL_TLS_TEST_DATA) + "/" + name;
}

inline std::shared_ptr<const server_credentials> load_credentials() {
    const cert_key_files pairs[] = {{data("mx.pem"), data("mx.key")},
                                    {data("other.pem"), data("other.key")}};
    std::string why;
    auto c = server_credentials::load(pairs, why);
    if (!c)
        ADD_FAILURE() << why;
    return c ? *c : nullptr;
}

inline std::shared_ptr<const ticket_key> make_ticket_key() {
    auto k = ticket_key::generate();
    if (!k)
        ADD_FAILURE() << "ticket key";
    return k ? *k : nullptr;
}

inline std::shared_ptr<const server_context> make_server(
    std::shared_ptr<const server_credentials> creds, std::shared_ptr<const ticket_key> key) {
    std::string why;
    auto c = server_context::create(std::move(creds), std::move(key), why);
    if (!c)
        ADD_FAILURE() << why;
    return c ? *c : nullptr;
}

inline std::shared_ptr<const client_context> make_client(client_options o) {
    std::string why;
    auto c = client_context::create(o, why);
    if (!c)
        ADD_FAILURE() << why;
    return c ? *c : nullptr;
}

inline client_options trusting_test_ca(verify_mode mode = verify_mode::verify) {
    client_options o;
    o.mode = mode;
    o.system_ca = false;
    o.extra_ca_file = data("ca.pem");
    return o;
}

// Moves ciphertext between a client and a server session, optionally in random pieces, and
// collects what each side reads.
struct link {
    link(session& c, session& s) : client(c), server(s) {}

    session& client;
    session& server;
    std::string client_got;
    std::string server_got;
    std::mt19937* splits = nullptr;  // null: deliver whole flights

    // Delivers one side's output to the other; returns whether anything moved.
    bool move(session& from, session& to, std::string& to_got) {
        std::string out;
        from.take_output(out);
        if (out.empty())
            return false;
        std::size_t pos = 0;
        while (pos < out.size()) {
            std::size_t n = out.size() - pos;
            if (splits != nullptr)
                n = std::min<std::size_t>(
                    n, std::uniform_int_distribution<std::size_t>(1, 3000)(*splits));
            to.feed(std::string_view(out).substr(pos, n));
            pos += n;
            to.step();
            to.read(to_got);
        }
        return true;
    }

    // Runs until neither side has anything to send (bounded).
    void pump() {
        for (int i = 0; i < 1000; ++i) {
            client.step();
            server.step();
            client.read(client_got);
            server.read(server_got);
            const bool a = move(client, server, server_got);
            const bool b = move(server, client, client_got);
            if (!a && !b)
                return;
        }
        ADD_FAILURE() << "pump did not settle";
    }
};

}  // namespace ringmail::tls::test
