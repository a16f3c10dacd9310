#include "ringmail/tls/context.h"

#include "ringmail/tls/errc.h"
#include "ringmail/tls/session.h"

#include <fmt/format.h>

#include "wolfssl.h"
#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

namespace ringmail::tls {

namespace {

// TLS 1.3 suites first (wolfSSL negotiates 1.3 when both sides can), then TLS 1.2 ECDHE with
// AEAD only: no CBC, no static RSA, no finite-field DH. ChaCha20-Poly1305 leads because
// Debian's wolfSSL 5.5.4 is built without AES-NI: its software AES-GCM runs at about half the
// speed (bench/micro/tls_bench). The server's order wins.
constexpr const char* cipher_list =
    "TLS13-CHACHA20-POLY1305-SHA256:TLS13-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384";

constexpr const char* groups_list = "X25519:P-256:P-384";

// The IANA values of cipher_list, for check_client_hello.
bool suite_values(std::vector<std::uint16_t>& out) {
    std::string_view list = cipher_list;
    while (!list.empty()) {
        const std::size_t colon = list.find(':');
        const std::string name(list.substr(0, colon));
        list = colon == std::string_view::npos ? std::string_view() : list.substr(colon + 1);
        unsigned char first = 0;
        unsigned char second = 0;
        int flags = 0;
        if (wolfSSL_get_cipher_suite_from_name(name.c_str(), &first, &second, &flags) != 0)
            return false;
        out.push_back(static_cast<std::uint16_t>(first << 8 | second));
    }
    return true;
}

constexpr std::size_t ticket_nonce_size = CHACHA20_POLY1305_AEAD_IV_SIZE;  // 12

// Session ticket protection with the process-wide ticket_key. The ticket body is encrypted in
// place; key_name says which key sealed it, iv carries a fresh random nonce drawn from the
// connection's own RNG (no shared RNG, no lock), mac the Poly1305 tag. The additional data
// binds the name and nonce. A ticket under another key is rejected: full handshake.
int ticket_cb(WOLFSSL* ssl, unsigned char key_name[WOLFSSL_TICKET_NAME_SZ],
              unsigned char iv[WOLFSSL_TICKET_IV_SZ], unsigned char mac[WOLFSSL_TICKET_MAC_SZ],
              int enc, unsigned char* ticket, int in_len, int* out_len, void* user) {
    static_assert(ticket_key::name_size == WOLFSSL_TICKET_NAME_SZ);
    static_assert(ticket_nonce_size <= WOLFSSL_TICKET_IV_SZ);
    static_assert(CHACHA20_POLY1305_AEAD_AUTHTAG_SIZE <= WOLFSSL_TICKET_MAC_SZ);
    const auto* key = static_cast<const ticket_key*>(user);
    if (key == nullptr || in_len < 0)
        return WOLFSSL_TICKET_RET_FATAL;
    unsigned char aad[WOLFSSL_TICKET_NAME_SZ + ticket_nonce_size];
    if (enc != 0) {
        std::memcpy(key_name, key->name().data(), WOLFSSL_TICKET_NAME_SZ);
        std::memset(iv, 0, WOLFSSL_TICKET_IV_SZ);
        WC_RNG* rng = wolfSSL_GetRNG(ssl);
        if (rng == nullptr || wc_RNG_GenerateBlock(rng, iv, ticket_nonce_size) != 0)
            return WOLFSSL_TICKET_RET_FATAL;
        std::memcpy(aad, key_name, WOLFSSL_TICKET_NAME_SZ);
        std::memcpy(aad + WOLFSSL_TICKET_NAME_SZ, iv, ticket_nonce_size);
        std::memset(mac, 0, WOLFSSL_TICKET_MAC_SZ);
        if (wc_ChaCha20Poly1305_Encrypt(key->key().data(), iv, aad, sizeof aad, ticket,
                                        static_cast<word32>(in_len), ticket, mac) != 0)
            return WOLFSSL_TICKET_RET_FATAL;
        *out_len = in_len;
        return WOLFSSL_TICKET_RET_OK;
    }
    if (std::memcmp(key_name, key->name().data(), WOLFSSL_TICKET_NAME_SZ) != 0)
        return WOLFSSL_TICKET_RET_REJECT;
    std::memcpy(aad, key_name, WOLFSSL_TICKET_NAME_SZ);
    std::memcpy(aad + WOLFSSL_TICKET_NAME_SZ, iv, ticket_nonce_size);
    if (wc_ChaCha20Poly1305_Decrypt(key->key().data(), iv, aad, sizeof aad, ticket,
                                    static_cast<word32>(in_len), mac, ticket) != 0)
        return WOLFSSL_TICKET_RET_REJECT;
    *out_len = in_len;
    return WOLFSSL_TICKET_RET_OK;
}

// SNI: switch the connection to the context whose certificate names the requested host.
int server_name_cb(WOLFSSL* ssl, int* /*alert*/, void* arg) {
    const auto* ctx = static_cast<const server_context*>(arg);
    const char* name = wolfSSL_get_servername(ssl, WOLFSSL_SNI_HOST_NAME);
    if (name == nullptr)
        return 0;  // SSL_TLSEXT_ERR_OK: default certificate
    if (auto* s = static_cast<session*>(wolfSSL_GetIOReadCtx(ssl)))
        s->on_server_name(name);
    const std::size_t i = ctx->credentials().select(name);
    if (i != 0)
        wolfSSL_set_SSL_CTX(ssl, ctx->native(i));
    return 0;
}

// Settings shared by both sides.
bool common_setup(WOLFSSL_CTX* ctx) {
    if (wolfSSL_CTX_SetMinVersion(ctx, WOLFSSL_TLSV1_2) != WOLFSSL_SUCCESS)
        return false;
    if (wolfSSL_CTX_set_cipher_list(ctx, cipher_list) != WOLFSSL_SUCCESS)
        return false;
    // Only X25519, P-256 and P-384 (issue 12: testssl found secp256k1 and the brainpool curves
    // accepted). Two lists in wolfSSL 5.5.4: the curves list sets the mask TLS 1.2 consults
    // when it picks the ECDHE curve from the client's supported_groups (without it every
    // curve compiled in is taken), the groups list what TLS 1.3 key shares may use and the
    // order (set last: the curves list replaces it).
    if (wolfSSL_CTX_set1_curves_list(ctx, groups_list) != WOLFSSL_SUCCESS)
        return false;
    // X25519 first: in this wolfSSL build it is several times cheaper than P-256 (generic
    // big-number code, no SP assembly), and every modern client offers it.
    int groups[] = {WOLFSSL_ECC_X25519, WOLFSSL_ECC_SECP256R1, WOLFSSL_ECC_SECP384R1};
    if (wolfSSL_CTX_set_groups(ctx, groups, 3) != WOLFSSL_SUCCESS)
        return false;
    wolfSSL_CTX_SetIORecv(ctx, detail::io_recv);
    wolfSSL_CTX_SetIOSend(ctx, detail::io_send);
    return true;
}

}  // namespace

// --- server_context --------------------------------------------------------------------------

server_context::server_context(std::shared_ptr<const server_credentials> credentials,
                               std::shared_ptr<const ticket_key> tickets)
    : _credentials(std::move(credentials)), _tickets(std::move(tickets)) {}

server_context::~server_context() {
    // wolfSSL counts references: a WOLFSSL still alive keeps its WOLFSSL_CTX, but sessions hold
    // this object anyway (the SNI callback needs it), so nothing outlives it.
    for (auto* c : _ctx)
        wolfSSL_CTX_free(c);
}

result<std::shared_ptr<const server_context>> server_context::create(
    std::shared_ptr<const server_credentials> credentials,
    std::shared_ptr<const ticket_key> tickets, std::string& error_text) {
    detail::init_wolfssl();
    if (!credentials || credentials->entries().empty() || !tickets) {
        error_text = "tls: server context without credentials or ticket key";
        return errc::no_certificates;
    }
    auto self = std::make_shared<server_context>(std::move(credentials), std::move(tickets));
    // The IANA values of groups_list, in the same order.
    self->_groups = {0x001d, 0x0017, 0x0018};
    if (!suite_values(self->_suites)) {
        error_text = "tls: wolfSSL does not know a cipher suite of ringmail's list";
        return errc::context_failed;
    }
    for (const auto& e : self->_credentials->entries()) {
        WOLFSSL_CTX* c = wolfSSL_CTX_new(wolfSSLv23_server_method());
        if (c == nullptr) {
            error_text = "tls: cannot create a wolfSSL server context";
            return errc::context_failed;
        }
        self->_ctx.push_back(c);
        if (!common_setup(c)) {
            error_text = "tls: wolfSSL refused the protocol or cipher settings";
            return errc::context_failed;
        }
        if (wolfSSL_CTX_use_certificate_chain_buffer(
                c, reinterpret_cast<const unsigned char*>(e.cert_pem.data()),
                static_cast<long>(e.cert_pem.size())) != WOLFSSL_SUCCESS ||
            wolfSSL_CTX_use_PrivateKey_buffer(
                c, reinterpret_cast<const unsigned char*>(e.key_pem.data()),
                static_cast<long>(e.key_pem.size()), WOLFSSL_FILETYPE_PEM) != WOLFSSL_SUCCESS) {
            error_text = fmt::format("tls: {}: certificate or key no longer loads", e.cert_file);
            return errc::bad_certificate;
        }
        wolfSSL_CTX_set_verify(c, WOLFSSL_VERIFY_NONE, nullptr);
        wolfSSL_CTX_set_options(c, WOLFSSL_OP_CIPHER_SERVER_PREFERENCE);
        // Resumption is stateless (tickets under the shared key): no per-context cache, which
        // would neither survive a reload nor be seen by other shards.
        wolfSSL_CTX_set_session_cache_mode(c, WOLFSSL_SESS_CACHE_OFF);
        if (wolfSSL_CTX_set_TicketEncCb(c, ticket_cb) != WOLFSSL_SUCCESS ||
            wolfSSL_CTX_set_TicketEncCtx(c, const_cast<ticket_key*>(self->_tickets.get())) !=
                WOLFSSL_SUCCESS) {
            error_text = "tls: wolfSSL refused the session ticket callback";
            return errc::context_failed;
        }
    }
    // Every connection starts on the default context; the callback also records the SNI.
    wolfSSL_CTX_set_servername_callback(self->_ctx[0], server_name_cb);
    wolfSSL_CTX_set_servername_arg(self->_ctx[0], self.get());
    return std::shared_ptr<const server_context>(std::move(self));
}

// --- client_context --------------------------------------------------------------------------

client_context::~client_context() {
    if (_ctx != nullptr)
        wolfSSL_CTX_free(_ctx);
}

result<std::shared_ptr<const client_context>> client_context::create(const client_options& options,
                                                                     std::string& error_text) {
    detail::init_wolfssl();
    auto self = std::make_shared<client_context>(options.mode);
    WOLFSSL_CTX* c = wolfSSL_CTX_new(wolfSSLv23_client_method());
    if (c == nullptr) {
        error_text = "tls: cannot create a wolfSSL client context";
        return errc::context_failed;
    }
    self->_ctx = c;
    if (!common_setup(c)) {
        error_text = "tls: wolfSSL refused the protocol or cipher settings";
        return errc::context_failed;
    }
    if (options.max_version) {
        const int v = *options.max_version == tls_version::tls1_2 ? TLS1_2_VERSION : TLS1_3_VERSION;
        if (wolfSSL_CTX_set_max_proto_version(c, v) != WOLFSSL_SUCCESS) {
            error_text = "tls: wolfSSL refused the maximum protocol version";
            return errc::context_failed;
        }
    }
    if (options.system_ca && wolfSSL_CTX_load_system_CA_certs(c) != WOLFSSL_SUCCESS &&
        options.mode == verify_mode::verify) {
        error_text = "tls: the system CA store does not load";
        return errc::system_ca_unavailable;
    }
    if (!options.extra_ca_file.empty()) {
        const int rc = wolfSSL_CTX_load_verify_locations(c, options.extra_ca_file.c_str(), nullptr);
        if (rc != WOLFSSL_SUCCESS) {
            error_text = fmt::format("tls: {}: CA file does not load ({})", options.extra_ca_file,
                                     detail::error_text(rc));
            return errc::bad_ca_file;
        }
    }
    // Always verify so that opportunistic sessions can report the outcome; the callback
    // overrides failures in opportunistic mode.
    wolfSSL_CTX_set_verify(c, WOLFSSL_VERIFY_PEER, detail::verify_peer);
    // Resumption goes through saved_session objects the caller keeps; wolfSSL's process-wide
    // client cache (row locks shared by every shard) stays unused.
    wolfSSL_CTX_set_session_cache_mode(c, WOLFSSL_SESS_CACHE_OFF);
    if (wolfSSL_CTX_UseSessionTicket(c) != WOLFSSL_SUCCESS) {
        error_text = "tls: wolfSSL refused session tickets";
        return errc::context_failed;
    }
    return std::shared_ptr<const client_context>(std::move(self));
}

void release_thread_cache() noexcept {
    wc_ecc_fp_free();
}

}  // namespace ringmail::tls
