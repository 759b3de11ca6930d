import hashlib, hmac, sys

def verify(secret: bytes, body: bytes, signature: str) -> bool:
    """True when `signature` (the x-jobvisor-signature header) signs `body`."""
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)

if __name__ == "__main__":  # python3 webhooks.py SECRET BODY_FILE SIGNATURE
    secret, body_file, signature = sys.argv[1:4]
    with open(body_file, "rb") as f:
        sys.exit(0 if verify(secret.encode(), f.read(), signature) else 1)
