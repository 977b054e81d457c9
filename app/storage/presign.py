"""Presigned URLs of S3 objects: the GET of every image of every answer (fresh on every read),
the hottest CPU of a read that shows images, and the worker's PUT of every generated image.
botocore's own SigV4 query signer (`S3SigV4QueryAuth`) on a request built here, with the URL's
base (endpoint, addressing style, bucket) taken once from the client. ~0.07 ms a URL against
~0.16 ms through the client's `generate_presigned_url` (its event machinery, parameter
validation and endpoint resolution on every call); the same URL, byte for byte
(tests/test_storage.py holds them to it)."""

from typing import Any
from urllib.parse import quote

PROBE = "gih-presign-probe"


class Presigner:
    def __init__(self, base: str, region: str, credentials: Any, ttl_s: int) -> None:
        self.base = base  # up to the key: "http://host/bucket/" or "https://bucket.host/"
        self.region = region
        self.credentials = credentials  # botocore's, refreshable ones included
        self.ttl_s = ttl_s

    @classmethod
    def of(cls, client: Any, credentials: Any, bucket: str, ttl_s: int) -> "Presigner | None":
        """The client's presigning, or None when it cannot be taken apart (no credentials, a
        base that does not end in the key): then the client signs each URL itself."""
        if credentials is None or not bucket:
            return None
        probe = client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": PROBE}, ExpiresIn=ttl_s)
        base, _, _ = probe.partition("?")
        if not base.endswith("/" + PROBE):
            return None
        return cls(base.removesuffix(PROBE), client.meta.region_name, credentials, ttl_s)

    def url(self, key: str) -> str:
        """A GET of `key` (get_object)."""
        return self._signed("GET", key, {}, self.ttl_s)

    def put_url(self, key: str, content_type: str) -> str:
        """A PUT of `key` with this Content-Type (put_object with ContentType): the header is
        signed, as botocore signs it."""
        return self._signed("PUT", key, {"Content-Type": content_type}, self.ttl_s)

    def _signed(self, method: str, key: str, headers: dict[str, str], ttl_s: int) -> str:
        from botocore.auth import S3SigV4QueryAuth
        from botocore.awsrequest import AWSRequest

        # botocore's serializer encodes a key as a greedy path label: everything but / and ~
        request = AWSRequest(method=method, url=self.base + quote(key, safe="/~"), headers=headers)
        S3SigV4QueryAuth(self.credentials.get_frozen_credentials(), "s3", self.region,
                         expires=ttl_s).add_auth(request)
        url: str = request.url
        return url
