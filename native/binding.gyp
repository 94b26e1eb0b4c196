{
  "targets": [
    {
      "target_name": "holdfast_native",
      "sources": ["src/binding.c", "src/fastcdc.c", "src/seal.c", "src/posix.c"],
      "cflags": ["-O3", "-std=gnu11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration", "-fvisibility=hidden"],
      "cflags!": ["-fno-exceptions"],
      "ldflags": ["-Wl,-z,now"],
      "defines": ["NAPI_VERSION=9"]
    }
  ]
}
