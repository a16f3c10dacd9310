// Internal to ringmail::tls: every wolfSSL include, in the order wolfSSL requires (options.h
// first, or structure layouts disagree with the library; .cc files include only this header
// for wolfSSL so that include sorting cannot break the order), and the one-time set-up.
#pragma once

// clang-format off
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/openssl/evp.h>
#include <wolfssl/openssl/pem.h>
#include <wolfssl/wolfcrypt/chacha20_poly1305.h>
#include <wolfssl/wolfcrypt/random.h>
// clang-format on

#include <string>

namespace ringmail::tls::detail {

// wolfSSL_Init exactly once per process (thread-safe: a function-local static). Every factory
// in tls calls it before touching wolfSSL.
void init_wolfssl();

// "reason text (code)" for a wolfSSL error code.
std::string error_text(int wolf_error);

}  // namespace ringmail::tls::detail

namespace ringmail::tls::detail {

// wolfSSL I/O callbacks; the per-connection context is the tls::session.
int io_recv(WOLFSSL* ssl, char* buf, int size, void* session);
int io_send(WOLFSSL* ssl, char* buf, int size, void* session);
// Client certificate verification: records the outcome in the session, and overrides a
// failure in opportunistic mode.
int verify_peer(int preverify, WOLFSSL_X509_STORE_CTX* store);

}  // namespace ringmail::tls::detail
