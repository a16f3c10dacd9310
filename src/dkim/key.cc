#include "ringmail/dkim/key.h"

#include "ringmail/core/base64.h"

#include <fmt/format.h>

#include "wolfssl.h"
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace ringmail::dkim {

namespace {

// A PEM key is a few kilobytes; anything larger is the wrong file.
constexpr std::size_t max_key_file = 64 * 1024;

struct rng_holder {
    WC_RNG rng{};
    bool ok = false;
    rng_holder() { ok = wc_InitRng(&rng) == 0; }
    ~rng_holder() {
        if (ok)
            wc_FreeRng(&rng);
    }
};

struct rsa_holder {
    RsaKey key{};
    bool ok = false;
    rsa_holder() { ok = wc_InitRsaKey(&key, nullptr) == 0; }
    ~rsa_holder() {
        if (ok)
            wc_FreeRsaKey(&key);
    }
};

struct ed_holder {
    ed25519_key key{};
    bool ok = false;
    ed_holder() { ok = wc_ed25519_init(&key) == 0; }
    ~ed_holder() {
        if (ok)
            wc_ed25519_free(&key);
    }
};

bool decode_rsa(const std::string& der, rsa_holder& h) {
    word32 idx = 0;
    return h.ok && wc_RsaPrivateKeyDecode(reinterpret_cast<const byte*>(der.data()), &idx, &h.key,
                                          static_cast<word32>(der.size())) == 0;
}

// wolfSSL signs with an Ed25519 key only when it holds the public half too (LIBRARY-NOTES).
bool decode_ed25519(const std::string& der, ed_holder& h) {
    word32 idx = 0;
    if (!h.ok || wc_Ed25519PrivateKeyDecode(reinterpret_cast<const byte*>(der.data()), &idx, &h.key,
                                            static_cast<word32>(der.size())) != 0)
        return false;
    byte pub[ED25519_PUB_KEY_SIZE];
    byte priv[ED25519_KEY_SIZE];
    word32 priv_len = sizeof priv;
    if (wc_ed25519_make_public(&h.key, pub, sizeof pub) != 0 ||
        wc_ed25519_export_private_only(&h.key, priv, &priv_len) != 0)
        return false;
    const int rc = wc_ed25519_import_private_key(priv, priv_len, pub, sizeof pub, &h.key);
    std::memset(priv, 0, sizeof priv);
    return rc == 0;
}

std::string bytes(const byte* p, std::size_t n) {
    return std::string(reinterpret_cast<const char*>(p), n);
}

}  // namespace

std::string_view algorithm_name(algorithm a) noexcept {
    return a == algorithm::rsa_sha256 ? "rsa-sha256" : "ed25519-sha256";
}

std::string private_key::dns_record() const {
    return fmt::format("v=DKIM1; k={}; p={}", _alg == algorithm::rsa_sha256 ? "rsa" : "ed25519",
                       _public_b64);
}

std::shared_ptr<const private_key> private_key::load_file(const std::string& path,
                                                          std::string& why) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        why = fmt::format("{}: cannot open: {}", path, std::strerror(errno));
        return nullptr;
    }
    std::string text;
    text.resize(max_key_file + 1);
    in.read(text.data(), static_cast<std::streamsize>(text.size()));
    if (in.bad()) {
        why = fmt::format("{}: cannot read", path);
        return nullptr;
    }
    text.resize(static_cast<std::size_t>(in.gcount()));
    if (text.size() > max_key_file) {
        why = fmt::format("{}: too large for a PEM private key", path);
        return nullptr;
    }
    return from_pem(text, path, why);
}

std::shared_ptr<const private_key> private_key::from_pem(std::string_view pem,
                                                         std::string_view name, std::string& why) {
    if (pem.find("-----BEGIN ENCRYPTED PRIVATE KEY-----") != std::string_view::npos ||
        pem.find("Proc-Type: 4,ENCRYPTED") != std::string_view::npos) {
        why = fmt::format(
            "{}: encrypted private keys are not supported (decrypt it with openssl "
            "pkey)",
            name);
        return nullptr;
    }
    if (pem.find("-----BEGIN") == std::string_view::npos) {
        why = fmt::format("{}: not a PEM private key", name);
        return nullptr;
    }
    std::string der(pem.size(), '\0');
    const int n = wc_KeyPemToDer(
        reinterpret_cast<const unsigned char*>(pem.data()), static_cast<int>(pem.size()),
        reinterpret_cast<unsigned char*>(der.data()), static_cast<int>(der.size()), nullptr);
    if (n <= 0) {
        why = fmt::format("{}: not a PEM private key (RSA or Ed25519 PKCS#8)", name);
        return nullptr;
    }
    der.resize(static_cast<std::size_t>(n));

    std::shared_ptr<const private_key> key;
    {
        rsa_holder rsa;
        if (decode_rsa(der, rsa)) {
            const int size = wc_RsaEncryptSize(&rsa.key);
            const unsigned bits = size > 0 ? static_cast<unsigned>(size) * 8 : 0;
            if (bits < min_rsa_bits || bits > max_rsa_bits) {
                why = fmt::format("{}: RSA key of {} bits: DKIM keys must have {} to {} bits", name,
                                  bits, min_rsa_bits, max_rsa_bits);
                return nullptr;
            }
            byte spki[1024];
            const int len = wc_RsaKeyToPublicDer(&rsa.key, spki, sizeof spki);
            if (len <= 0) {
                why = fmt::format("{}: cannot export the RSA public key", name);
                return nullptr;
            }
            key = std::make_shared<const private_key>(
                algorithm::rsa_sha256, bits, der,
                core::base64_encode(bytes(spki, static_cast<std::size_t>(len))));
        }
    }
    if (!key) {
        ed_holder ed;
        if (decode_ed25519(der, ed)) {
            byte pub[ED25519_PUB_KEY_SIZE];
            word32 pub_len = sizeof pub;
            if (wc_ed25519_export_public(&ed.key, pub, &pub_len) != 0) {
                why = fmt::format("{}: cannot export the Ed25519 public key", name);
                return nullptr;
            }
            key = std::make_shared<const private_key>(algorithm::ed25519_sha256, 256, der,
                                                      core::base64_encode(bytes(pub, pub_len)));
        }
    }
    if (!key) {
        why = fmt::format("{}: neither an RSA nor an Ed25519 private key", name);
        return nullptr;
    }
    // Prove the key: a test signature must verify with its public half.
    std::string text;
    auto s = key_signer::create(key, text);
    if (!s) {
        why = fmt::format("{}: {}", name, text);
        return nullptr;
    }
    const digest probe = sha256_of("ringmail dkim key check");
    auto sig = s->sign(probe);  // RSA signatures are verified inside sign()
    bool valid = sig.has_value();
    if (valid && key->alg() == algorithm::ed25519_sha256) {
        ed_holder ed;
        int ok = 0;
        valid = decode_ed25519(der, ed) &&
                wc_ed25519_verify_msg(reinterpret_cast<const byte*>(sig->data()),
                                      static_cast<word32>(sig->size()), probe.data(),
                                      static_cast<word32>(probe.size()), &ok, &ed.key) == 0 &&
                ok == 1;
    }
    if (!valid) {
        why = fmt::format("{}: the key does not produce valid signatures", name);
        return nullptr;
    }
    return key;
}

// --- signing -----------------------------------------------------------------------------

struct key_signer::impl {
    rng_holder rng;
    rsa_holder rsa;
    ed_holder ed;
};

key_signer::key_signer(std::shared_ptr<const private_key> key)
    : _key(std::move(key)), _impl(std::make_unique<impl>()) {}

key_signer::~key_signer() = default;

std::unique_ptr<key_signer> key_signer::create(std::shared_ptr<const private_key> key,
                                               std::string& why) {
    std::unique_ptr<key_signer> s(new key_signer(std::move(key)));
    if (!s->_impl->rng.ok) {
        why = "cannot initialise wolfSSL's random number generator";
        return nullptr;
    }
    if (s->_key->alg() == algorithm::rsa_sha256) {
        if (!decode_rsa(s->_key->der(), s->_impl->rsa)) {
            why = "cannot decode the RSA key";
            return nullptr;
        }
        if (wc_RsaSetRNG(&s->_impl->rsa.key, &s->_impl->rng.rng) != 0) {
            why = "cannot attach the random number generator to the RSA key";
            return nullptr;
        }
    } else if (!decode_ed25519(s->_key->der(), s->_impl->ed)) {
        why = "cannot decode the Ed25519 key";
        return nullptr;
    }
    return s;
}

result<std::string> key_signer::sign(const digest& d) {
    if (_key->alg() == algorithm::rsa_sha256) {
        // RSASSA-PKCS1-v1_5: the DigestInfo of the SHA-256 digest, then the private operation.
        RsaKey* k = &_impl->rsa.key;
        byte info[64];
        const word32 info_len =
            wc_EncodeSignature(info, d.data(), static_cast<word32>(d.size()), SHA256h);
        if (info_len == 0 || info_len > sizeof info)
            return errc::sign_failed;
        std::string sig(static_cast<std::size_t>(wc_RsaEncryptSize(k)), '\0');
        const int n = wc_RsaSSL_Sign(info, info_len, reinterpret_cast<byte*>(sig.data()),
                                     static_cast<word32>(sig.size()), k, &_impl->rng.rng);
        if (n <= 0)
            return errc::sign_failed;
        sig.resize(static_cast<std::size_t>(n));
        byte back[512];
        const int m = wc_RsaSSL_Verify(reinterpret_cast<const byte*>(sig.data()),
                                       static_cast<word32>(sig.size()), back, sizeof back, k);
        if (m != static_cast<int>(info_len) || std::memcmp(back, info, info_len) != 0)
            return errc::sign_failed;
        return sig;
    }
    byte out[ED25519_SIG_SIZE];
    word32 len = sizeof out;
    if (wc_ed25519_sign_msg(d.data(), static_cast<word32>(d.size()), out, &len, &_impl->ed.key) !=
        0)
        return errc::sign_failed;
    return bytes(out, len);
}

}  // namespace ringmail::dkim
