"""Your torch CNN and torch Dataset on Split MNIST, trained by sequax with DER++, back in torch."""
import torch
from sequax.configs.common import der_config
from sequax.data import load_packaged_mnist
from sequax.engine import loop, torch_bridge

class Digits(torch.utils.data.Dataset):  # yours: any Dataset of (image [C, H, W], int label)
    def __init__(self, split):  # here the MNIST digits shipped with sequax: 8,000 train, 2,000 test
        mnist = load_packaged_mnist()
        self.x = torch.tensor(getattr(mnist, f"{split}_x")).permute(0, 3, 1, 2).float() / 255
        self.y = torch.tensor(getattr(mnist, f"{split}_y")).long()
    def __len__(self):
        return len(self.y)
    def __getitem__(self, i):
        return self.x[i], int(self.y[i])

def datasets():  # config.data.factory: (train, test)
    return Digits("train"), Digits("test")

def cnn():  # yours: any nn.Module, here with BatchNorm; [B, 1, 28, 28] -> [B, 10] logits
    return torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                               torch.nn.MaxPool2d(4), torch.nn.Flatten(), torch.nn.Linear(576, 10))

config = der_config("split", "derpp", lr=0.03, capacity=500, replay_batch=10, alpha=1.0, beta=0.5)
config.data.update(source="torch", factory="__main__:datasets", train_per_task=600)
config.model = {"name": "torch", "factory": "__main__:cnn", "input_shape": (28, 28, 1)}
result = loop.run(config, "runs/torch_split_mnist")  # 5 tasks, one compiled program
net = torch_bridge.write_back(cnn(), result.state.params, result.state.model_state)  # + BN stats
test = Digits("test")
print(f"torch: {(net.eval()(test.x).argmax(1) == test.y).float().mean():.2%} of test digits right")
