// DKIM private keys: loaded once (start-up, --check-config, SIGHUP) on the main thread and
// shared read-only by every shard; each shard signs through its own key_signer, because
// wolfSSL's key objects and RNG keep state while they work.
//
// Loading fails with one clear text naming the file (unreadable, not PEM, encrypted, neither
// RSA nor Ed25519, RSA outside 1024..4096 bits) and proves the key by signing and verifying a
// test digest. key_signer::sign verifies every RSA signature with the public key before it is
// used (a faulty CRT computation would leak the key and give a broken signature).
#pragma once

#include "ringmail/core/result.h"
#include "ringmail/dkim/canon.h"
#include "ringmail/dkim/errc.h"

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace ringmail::dkim {

enum class algorithm : std::uint8_t { rsa_sha256, ed25519_sha256 };
std::string_view algorithm_name(algorithm a) noexcept;  // "rsa-sha256", "ed25519-sha256"

inline constexpr unsigned min_rsa_bits = 1024;
inline constexpr unsigned max_rsa_bits = 4096;
inline constexpr unsigned warn_rsa_bits = 2048;  // smaller keys load with a warning

class private_key {
  public:
    // `why` gets "FILE: reason" on failure.
    static std::shared_ptr<const private_key> load_file(const std::string& path, std::string& why);
    // `name` is used in the messages.
    static std::shared_ptr<const private_key> from_pem(std::string_view pem, std::string_view name,
                                                       std::string& why);

    algorithm alg() const noexcept { return _alg; }
    unsigned bits() const noexcept { return _bits; }          // RSA modulus size; 256 for Ed25519
    const std::string& der() const noexcept { return _der; }  // the private key, DER
    // The p= value of the DNS record: base64 of the SubjectPublicKeyInfo (RSA) or of the raw
    // 32-byte public key (Ed25519, RFC 8463).
    const std::string& public_key_base64() const noexcept { return _public_b64; }
    // "v=DKIM1; k=rsa; p=..." (k=ed25519 for Ed25519).
    std::string dns_record() const;

    private_key(algorithm a, unsigned bits, std::string der, std::string public_b64)
        : _alg(a), _bits(bits), _der(std::move(der)), _public_b64(std::move(public_b64)) {}

  private:
    algorithm _alg;
    unsigned _bits;
    std::string _der;
    std::string _public_b64;
};

// One shard's signing context for one key. Not thread-safe; create one per shard.
class key_signer {
  public:
    static std::unique_ptr<key_signer> create(std::shared_ptr<const private_key> key,
                                              std::string& why);
    ~key_signer();
    key_signer(const key_signer&) = delete;
    key_signer& operator=(const key_signer&) = delete;

    // The signature of the SHA-256 digest of the header data (RSASSA-PKCS1-v1_5 with the
    // DigestInfo, or PureEdDSA over the 32 digest bytes), raw bytes.
    result<std::string> sign(const digest& d);
    const private_key& key() const noexcept { return *_key; }

    struct impl;

  private:
    explicit key_signer(std::shared_ptr<const private_key> key);
    std::shared_ptr<const private_key> _key;
    std::unique_ptr<impl> _impl;
};

}  // namespace ringmail::dkim
