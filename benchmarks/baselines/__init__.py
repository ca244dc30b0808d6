"""What kakehashi's engine is compared with: transformers, llama.cpp and the machine's limits."""
