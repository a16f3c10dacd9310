#!/bin/sh
# Regenerates the test certificates (run once; the outputs are committed). ECDSA P-256, 100 years.
set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
  -days 36500 -subj "/CN=ringmail test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
for name in mx other; do
  if [ $name = mx ]; then cn=mx.example.test; san="DNS:mx.example.test,DNS:*.example.test"
  else cn=other.test; san="DNS:other.test"; fi
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $name.key -out $name.csr \
    -subj "/CN=$cn"
  printf "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n" "$san" > $name.ext
  openssl x509 -req -in $name.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 36500 \
    -extfile $name.ext -out $name.pem
  rm -f $name.csr $name.ext
done
rm -f ca.srl
