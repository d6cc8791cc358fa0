"""Training a small CNN on MNIST-shaped data with PopTorch's API, shaped like Graphcore's public
PopTorch MNIST tutorial: only the import differs (``import softipu.poptorch as poptorch``), and
random digits stand in for the torchvision download (no network access needed).

Run: ``.venv/bin/python examples/train_mnist_poptorch.py``. It trains for one epoch on a
simulated IPU (a small one by default, so it takes seconds; ``TARGET = None`` uses a GC200),
then validates with an ``inferenceModel`` of the same network, which sees the trained weights.
"""

import torch
import torch.nn as nn

import softipu as sp
import softipu.poptorch as poptorch

# Sizes (the tutorial uses the whole of MNIST, batch 8 x 50 device iterations).
training_batch_size = 4
test_batch_size = 8
device_iterations = 5
epochs = 1
learning_rate = 0.5
train_samples = 160
test_samples = 40
TARGET = sp.targets.ipu_model(tiles=64, bytes_per_tile=512 * 1024)  # softipu only: a small chip


class SyntheticMNIST(torch.utils.data.Dataset):
    """Digits as 28x28 images: each class a fixed random pattern plus noise (learnable)."""

    def __init__(self, samples: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        patterns = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        self.labels = torch.randint(0, 10, (samples,), generator=g)
        self.images = patterns[self.labels] + 0.5 * torch.randn(samples, 1, 28, 28, generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]


# The network, as in the tutorial.
class Block(nn.Module):
    def __init__(self, in_channels, num_filters, kernel_size, pool_size):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_filters, kernel_size=kernel_size)
        self.pool = nn.MaxPool2d(kernel_size=pool_size)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.conv(x)
        x = self.pool(x)
        x = self.relu(x)
        return x


class Network(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer1 = Block(1, 8, 3, 2)
        self.layer2 = Block(8, 16, 3, 2)
        self.layer3 = nn.Linear(16 * 5 * 5, 64)
        self.layer3_act = nn.ReLU()
        self.layer4 = nn.Linear(64, 10)
        self.softmax = nn.Softmax(1)

    def forward(self, x):
        x = self.layer1(x)
        x = self.layer2(x)
        x = x.view(-1, 16 * 5 * 5)
        x = self.layer3_act(self.layer3(x))
        x = self.layer4(x)
        x = self.softmax(x)
        return x


class TrainingModelWithLoss(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.loss = torch.nn.CrossEntropyLoss()

    def forward(self, args, labels=None):
        output = self.model(args)
        if labels is None:
            return output
        loss = self.loss(output, labels)
        return output, loss


def accuracy(predictions, labels):
    _, ind = torch.max(predictions, 1)
    labels = labels[-predictions.size()[0]:]
    return torch.sum(torch.eq(ind, labels)).item() / labels.size()[0] * 100.0


def main() -> dict:
    torch.manual_seed(0)
    opts = poptorch.Options()
    opts.deviceIterations(device_iterations)
    if TARGET is not None:
        opts.setTarget(TARGET)  # softipu's extension (PopTorch runs on the IPU it finds)
    training_data = poptorch.DataLoader(opts, SyntheticMNIST(train_samples, seed=1),
                                        batch_size=training_batch_size, shuffle=True, drop_last=True)

    model = Network()
    model_with_loss = TrainingModelWithLoss(model)
    optimizer = poptorch.optim.SGD(model.parameters(), lr=learning_rate)
    training_model = poptorch.trainingModel(model_with_loss, opts, optimizer=optimizer)

    losses = []
    for _ in range(epochs):
        for data, labels in training_data:
            preds, loss = training_model(data, labels)
            losses.append(float(loss))
            print(f"loss {float(loss):.4f}  accuracy {accuracy(preds, labels):.1f}%")
    training_model.detachFromDevice()

    test_opts = poptorch.Options()
    if TARGET is not None:
        test_opts.setTarget(TARGET)
    test_data = torch.utils.data.DataLoader(SyntheticMNIST(test_samples, seed=2), batch_size=test_batch_size,
                                            shuffle=False, drop_last=True)
    inference_model = poptorch.inferenceModel(model, test_opts)
    sum_acc = 0.0
    for data, labels in test_data:
        output = inference_model(data)
        sum_acc += accuracy(output, labels)
    test_accuracy = sum_acc / len(test_data)
    last_output = output
    print(f"Accuracy on test set: {test_accuracy:0.2f}%")
    inference_model.detachFromDevice()
    return {"losses": losses, "test_accuracy": test_accuracy, "model": model, "last_batch": data,
            "last_output": last_output}


if __name__ == "__main__":
    main()
