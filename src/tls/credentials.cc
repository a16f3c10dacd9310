#include "ringmail/tls/credentials.h"

#include "ringmail/core/ascii.h"
#include "ringmail/tls/errc.h"

#include <fmt/format.h>

#include "wolfssl.h"
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

namespace ringmail::tls {

namespace detail {

void init_wolfssl() {
    static const int once = wolfSSL_Init();
    (void)once;
}

std::string error_text(int wolf_error) {
    const char* reason = wolfSSL_ERR_reason_error_string(static_cast<unsigned long>(wolf_error));
    if (reason == nullptr || *reason == '\0')
        return fmt::format("wolfSSL error {}", wolf_error);
    return fmt::format("{} ({})", reason, wolf_error);
}

}  // namespace detail

// --- ticket_key ------------------------------------------------------------------------------

result<std::shared_ptr<const ticket_key>> ticket_key::generate() {
    detail::init_wolfssl();
    WC_RNG rng;
    if (wc_InitRng(&rng) != 0)
        return errc::context_failed;
    std::array<std::uint8_t, name_size> name{};
    std::array<std::uint8_t, key_size> key{};
    int rc = wc_RNG_GenerateBlock(&rng, name.data(), name.size());
    if (rc == 0)
        rc = wc_RNG_GenerateBlock(&rng, key.data(), key.size());
    wc_FreeRng(&rng);
    if (rc != 0)
        return errc::context_failed;
    auto k = std::make_shared<const ticket_key>(name, key);
    explicit_bzero(key.data(), key.size());
    return std::shared_ptr<const ticket_key>(std::move(k));
}

ticket_key::~ticket_key() {
    explicit_bzero(_key.data(), _key.size());
}

// --- names -----------------------------------------------------------------------------------

bool name_matches(std::string_view pattern, std::string_view host) noexcept {
    if (pattern.empty() || host.empty())
        return false;
    if (pattern.size() > 2 && pattern.substr(0, 2) == "*.") {
        const std::string_view rest = pattern.substr(1);  // ".example.test"
        if (host.size() <= rest.size() || host.substr(host.size() - rest.size()) != rest)
            return false;
        const std::string_view label = host.substr(0, host.size() - rest.size());
        return label.find('.') == std::string_view::npos;
    }
    return pattern == host;
}

std::size_t server_credentials::select(std::string_view server_name) const noexcept {
    if (!server_name.empty() && server_name.back() == '.')
        server_name.remove_suffix(1);
    if (server_name.empty() || server_name.size() > 253)
        return 0;
    char buf[253];
    for (std::size_t i = 0; i < server_name.size(); ++i)
        buf[i] = core::to_lower_ascii(server_name[i]);
    const std::string_view host(buf, server_name.size());
    for (std::size_t i = 0; i < _entries.size(); ++i)
        for (const auto& n : _entries[i].names)
            if (n == host)
                return i;
    for (std::size_t i = 0; i < _entries.size(); ++i)
        for (const auto& n : _entries[i].names)
            if (name_matches(n, host))
                return i;
    return 0;
}

// --- loading ---------------------------------------------------------------------------------

namespace {

bool read_file(const std::string& path, std::string& out, std::string& why) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (f == nullptr) {
        why = std::strerror(errno);
        return false;
    }
    out.clear();
    char buf[8192];
    std::size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) {
        out.append(buf, n);
        if (out.size() > 16 * 1024 * 1024) {
            std::fclose(f);
            why = "larger than 16 MiB";
            return false;
        }
    }
    const bool bad = std::ferror(f) != 0;
    const int err = errno;
    std::fclose(f);
    if (bad) {
        why = std::strerror(err);
        return false;
    }
    return true;
}

std::string lower(std::string_view s) {
    std::string r(s);
    for (auto& c : r)
        c = core::to_lower_ascii(c);
    return r;
}

WOLFSSL_X509* leaf_certificate(const std::string& pem) {
    return wolfSSL_X509_load_certificate_buffer(reinterpret_cast<const unsigned char*>(pem.data()),
                                                static_cast<int>(pem.size()), WOLFSSL_FILETYPE_PEM);
}

// Subject DNS subjectAltNames of the certificate (else its CN), lower case.
std::vector<std::string> certificate_names(WOLFSSL_X509* x) {
    std::vector<std::string> names;
    while (const char* alt = wolfSSL_X509_get_next_altname(x))
        names.push_back(lower(alt));
    if (names.empty()) {
        if (const char* cn = wolfSSL_X509_get_subjectCN(x); cn != nullptr && *cn != '\0')
            names.push_back(lower(cn));
    }
    return names;
}

// wolfSSL 5.5.4's check_private_key accepts any ECC key of the right curve, so the pair is
// proven by a signature: sign with the key, verify with the certificate's public key.
bool key_matches(WOLFSSL_X509* x, const std::string& key_pem) {
    WOLFSSL_BIO* bio = wolfSSL_BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size()));
    WOLFSSL_EVP_PKEY* priv =
        bio != nullptr ? wolfSSL_PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr) : nullptr;
    WOLFSSL_EVP_PKEY* pub = wolfSSL_X509_get_pubkey(x);
    bool ok = false;
    if (priv != nullptr && pub != nullptr) {
        static constexpr unsigned char probe[] = "ringmail key/certificate pairing probe";
        unsigned char sig[1024];
        std::size_t sig_len = sizeof sig;
        WOLFSSL_EVP_MD_CTX* md = wolfSSL_EVP_MD_CTX_new();
        ok = md != nullptr &&
             wolfSSL_EVP_DigestSignInit(md, nullptr, wolfSSL_EVP_sha256(), nullptr, priv) == 1 &&
             wolfSSL_EVP_DigestSignUpdate(md, probe, sizeof probe) == 1 &&
             wolfSSL_EVP_DigestSignFinal(md, sig, &sig_len) == 1;
        wolfSSL_EVP_MD_CTX_free(md);
        md = ok ? wolfSSL_EVP_MD_CTX_new() : nullptr;
        ok = md != nullptr &&
             wolfSSL_EVP_DigestVerifyInit(md, nullptr, wolfSSL_EVP_sha256(), nullptr, pub) == 1 &&
             wolfSSL_EVP_DigestVerifyUpdate(md, probe, sizeof probe) == 1 &&
             wolfSSL_EVP_DigestVerifyFinal(md, sig, sig_len) == 1;
        wolfSSL_EVP_MD_CTX_free(md);
    }
    wolfSSL_EVP_PKEY_free(pub);
    wolfSSL_EVP_PKEY_free(priv);
    wolfSSL_BIO_free(bio);
    return ok;
}

}  // namespace

result<std::shared_ptr<const server_credentials>> server_credentials::load(
    std::span<const cert_key_files> pairs, std::string& error_text) {
    detail::init_wolfssl();
    if (pairs.empty()) {
        error_text = "tls: no certificate configured";
        return errc::no_certificates;
    }
    std::vector<entry> entries;
    entries.reserve(pairs.size());
    for (const auto& p : pairs) {
        entry e;
        e.cert_file = p.cert_file;
        std::string why;
        if (!read_file(p.cert_file, e.cert_pem, why)) {
            error_text = fmt::format("tls: {}: cannot read certificate: {}", p.cert_file, why);
            return errc::file_unreadable;
        }
        if (!read_file(p.key_file, e.key_pem, why)) {
            error_text = fmt::format("tls: {}: cannot read private key: {}", p.key_file, why);
            return errc::file_unreadable;
        }
        // A throw-away context checks exactly what the shards' contexts will load.
        WOLFSSL_CTX* ctx = wolfSSL_CTX_new(wolfSSLv23_server_method());
        if (ctx == nullptr) {
            error_text = "tls: cannot create a wolfSSL context";
            return errc::context_failed;
        }
        errc bad{};
        int rc = wolfSSL_CTX_use_certificate_chain_buffer(
            ctx, reinterpret_cast<const unsigned char*>(e.cert_pem.data()),
            static_cast<long>(e.cert_pem.size()));
        if (rc != WOLFSSL_SUCCESS) {
            error_text = fmt::format("tls: {}: no valid PEM certificate ({})", p.cert_file,
                                     detail::error_text(rc));
            bad = errc::bad_certificate;
        } else if ((rc = wolfSSL_CTX_use_PrivateKey_buffer(
                        ctx, reinterpret_cast<const unsigned char*>(e.key_pem.data()),
                        static_cast<long>(e.key_pem.size()), WOLFSSL_FILETYPE_PEM)) !=
                   WOLFSSL_SUCCESS) {
            error_text = fmt::format("tls: {}: no valid PEM private key ({})", p.key_file,
                                     detail::error_text(rc));
            bad = errc::bad_private_key;
        }
        wolfSSL_CTX_free(ctx);
        if (bad != errc{})
            return bad;
        WOLFSSL_X509* leaf = leaf_certificate(e.cert_pem);
        if (leaf == nullptr) {
            error_text = fmt::format("tls: {}: no valid PEM certificate", p.cert_file);
            return errc::bad_certificate;
        }
        const bool match = key_matches(leaf, e.key_pem);
        e.names = certificate_names(leaf);
        wolfSSL_X509_free(leaf);
        if (!match) {
            error_text =
                fmt::format("tls: {}: private key does not match {}", p.key_file, p.cert_file);
            return errc::key_mismatch;
        }
        entries.push_back(std::move(e));
    }
    return std::shared_ptr<const server_credentials>(
        std::make_shared<const server_credentials>(std::move(entries)));
}

}  // namespace ringmail::tls
