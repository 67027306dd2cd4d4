#!/usr/bin/env bash
# make-certs.sh OUTDIR: a throwaway "public" CA and leaf certificates for the Cursor stand-in, so
# tests can trust the stand-in the way the world trusts Cursor, and prove that cordond checks the
# upstream certificate. Writes into OUTDIR (created if needed):
#   ca.pem, ca.key                "cordon test public CA" (trust it with NODE_EXTRA_CA_CERTS / --cacert)
#   standin.pem, standin.key      valid 30 days for api2.cursor.sh, agentn.api5.cursor.sh,
#                                 repo42.cursor.sh and api.cursor.com (the stand-in's certificate)
#   wronghost.pem, wronghost.key  valid, from the same CA, but only for wrong-host.example
#   expired.pem, expired.key      the four Cursor names, from the same CA, expired
#                                 (2020-01-01 to 2020-01-02)
# All keys are EC P-256. Certificates are 0644, keys 0600.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
OUT=$1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DB=$OUT/ca-db
rm -rf "$DB"
mkdir -p "$DB/newcerts"
: > "$DB/index.txt"
echo 1000 > "$DB/serial"

cat > "$DB/openssl.cnf" <<EOF
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = unused
[ ca_ext ]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash

[ ca ]
default_ca = test_ca
[ test_ca ]
database = $DB/index.txt
new_certs_dir = $DB/newcerts
serial = $DB/serial
certificate = $OUT/ca.pem
private_key = $OUT/ca.key
default_md = sha256
policy = policy_any
unique_subject = no
email_in_dn = no
copy_extensions = none
[ policy_any ]
commonName = supplied

[ cursor_ext ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:api2.cursor.sh,DNS:agentn.api5.cursor.sh,DNS:repo42.cursor.sh,DNS:api.cursor.com
[ wronghost_ext ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:wrong-host.example
EOF

quiet() { "$@" > "$DB/last.log" 2>&1 || { cat "$DB/last.log" >&2; exit 1; }; }

quiet openssl req -config "$DB/openssl.cnf" -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-days 30 -subj "/CN=cordon test public CA" -extensions ca_ext -keyout "$OUT/ca.key" -out "$OUT/ca.pem"

# leaf NAME CN EXTENSIONS [openssl ca validity options...]
leaf() {
	local name=$1 cn=$2 ext=$3
	shift 3
	quiet openssl req -config "$DB/openssl.cnf" -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-subj "/CN=$cn" -keyout "$OUT/$name.key" -out "$DB/$name.csr"
	quiet openssl ca -config "$DB/openssl.cnf" -batch -notext -extensions "$ext" "$@" \
		-in "$DB/$name.csr" -out "$OUT/$name.pem"
}

leaf standin api2.cursor.sh cursor_ext -days 30
leaf wronghost wrong-host.example wronghost_ext -days 30
leaf expired api2.cursor.sh cursor_ext -startdate 20200101000000Z -enddate 20200102000000Z

chmod 0644 "$OUT"/*.pem
chmod 0600 "$OUT"/*.key
echo "make-certs: CA and leaves (standin, wronghost, expired) in $OUT"
